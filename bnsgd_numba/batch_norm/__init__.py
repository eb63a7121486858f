"""BatchNorm: the functional API, the layer, and their CPU and CUDA kernels.

- :mod:`~bnsgd_numba.batch_norm.functional`: ``batch_norm_forward`` and
  ``batch_norm_backward``, which check their arguments and dispatch to a backend;
- :mod:`~bnsgd_numba.batch_norm.layer`: the :class:`BatchNorm` layer;
- ``_cpu`` (``@njit`` kernels), ``_cuda`` (``@cuda.jit`` kernels) and
  ``_cuda_driver`` (their host side): the backends, which never import the
  modules above.
"""

from bnsgd_numba.batch_norm._common import (
    BatchNormGrads,
    BatchNormOutput,
    NonFiniteStatisticsError,
)
from bnsgd_numba.batch_norm.functional import batch_norm_backward, batch_norm_forward
from bnsgd_numba.batch_norm.layer import BatchNorm

__all__ = [
    "BatchNorm",
    "BatchNormGrads",
    "BatchNormOutput",
    "NonFiniteStatisticsError",
    "batch_norm_backward",
    "batch_norm_forward",
]
