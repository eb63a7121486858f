"""Worked examples that use the library's kernels end to end."""
