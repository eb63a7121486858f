"""Shared low-level pieces below every concept package.

Array predicates, compile options, memory layouts, float64 reductions,
layer-state loading and the CUDA backend (the only module that imports
numba-cuda). Nothing here imports a concept package (``batch_norm``,
``sgd``, ``normalizations``, ``schedulers``, ``nn``) or the command line.
"""
