"""Data readers (BEIR, TREC) and retrieval metrics."""
