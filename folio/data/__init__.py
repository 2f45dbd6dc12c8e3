"""Data: corpora -> token files -> batches."""
