"""Search over a model's table: the in-memory index, image and report search, precomputed answers."""
