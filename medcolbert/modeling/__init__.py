"""The ColBERT encoder, its tokenization and its checkpoint format."""
