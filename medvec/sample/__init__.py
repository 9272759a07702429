"""Medvec's offline demo dataset."""
