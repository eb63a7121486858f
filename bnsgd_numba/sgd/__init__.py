"""SGD: one step, the optimizer, the parameter arena and gradient clipping.

- :mod:`~bnsgd_numba.sgd.functional`: :func:`sgd_step` on one tensor;
- :mod:`~bnsgd_numba.sgd.optimizer`: :class:`SGD` over a list of tensors or
  a :class:`ParameterArena` (:mod:`~bnsgd_numba.sgd.arena`);
- :mod:`~bnsgd_numba.sgd.clipping`: :func:`clip_grad_norm`, :func:`clip_grad_value`;
- ``_cpu`` (``@njit`` kernels), ``_cuda`` (``@cuda.jit`` kernels) and
  ``_cuda_driver`` (their host side): the backends, which never import the
  modules above.
"""

from bnsgd_numba.sgd.arena import DeviceParameterArena, ParameterArena
from bnsgd_numba.sgd.clipping import clip_grad_norm, clip_grad_value
from bnsgd_numba.sgd.functional import sgd_step
from bnsgd_numba.sgd.optimizer import SGD

__all__ = [
    "SGD",
    "DeviceParameterArena",
    "ParameterArena",
    "clip_grad_norm",
    "clip_grad_value",
    "sgd_step",
]
