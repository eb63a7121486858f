"""The seed document's network: layers, data and training.

- :mod:`~bnsgd_numba.nn.layers`: ``Dense``, ``ReLU``, ``Sequential`` and
  ``softmax_cross_entropy``; :class:`~bnsgd_numba.BatchNorm` fits in as a layer;
- :mod:`~bnsgd_numba.nn.data`: the digits and ``.npz`` data sets;
- :mod:`~bnsgd_numba.nn.training`: :func:`train`, the main job of ``bnsgd-numba train``.
"""

from bnsgd_numba.nn.layers import Dense, ReLU, Sequential, softmax_cross_entropy

__all__ = ["Dense", "ReLU", "Sequential", "softmax_cross_entropy"]
