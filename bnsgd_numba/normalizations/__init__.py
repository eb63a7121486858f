"""Normalization layers as plugins, created with :func:`bnsgd_numba.create_normalization`."""
