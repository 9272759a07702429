"""Software-defined assets; each body is a short recipe over the `medvec` domain package."""
