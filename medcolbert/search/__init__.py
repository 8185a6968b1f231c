"""Search over encoded documents: exact MaxSim reranking."""
