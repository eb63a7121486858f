"""Benchmarks that measure the kernels against PyTorch, NumPy and the memory bandwidth.

Every benchmark reports ratios measured side by side in one run, because the
machines are shared and noisy; ``bnsgd-numba bench`` runs them.
"""
