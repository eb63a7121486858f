"""The seed document's network: layers, data and training.

- :mod:`~bnsgd_numba.nn.layers`: ``Dense``, ``ReLU``, ``Sequential`` (train/eval
  modes, ``predict``, ``evaluate``, a PyTorch-keyed ``state_dict``, ``save`` and
  ``load`` in one ``.npz``) and ``softmax_cross_entropy``;
  :class:`~bnsgd_numba.BatchNorm` fits in as a layer;
- :mod:`~bnsgd_numba.nn.data`: ``load_data`` (an ``.npz`` file or a directory of
  MNIST's IDX files) and the digits;
- :mod:`~bnsgd_numba.nn.training`: :func:`train`, the main job of ``bnsgd-numba train``.
"""

from bnsgd_numba.nn.data import Dataset, load_data
from bnsgd_numba.nn.layers import Dense, ReLU, Sequential, softmax_cross_entropy

__all__ = ["Dataset", "Dense", "ReLU", "Sequential", "load_data", "softmax_cross_entropy"]
