"""First-stage and comparison retrievers."""
