"""Shared low-level pieces below every concept package.

Array predicates, argument checks, compile options, memory layouts, float64
reductions, the base class of every normalization layer and the CUDA backend
(the only module that imports numba-cuda). Nothing here imports a concept package (``batch_norm``,
``sgd``, ``normalizations``, ``schedulers``, ``nn``) or the command line.
"""
