"""The conformance kit's checks on the normalization variants' device layers.

Under the simulator these are the longest GPU tests: they have a file of their
own so that pytest-xdist can run them beside the rest of
``test_normalizations_gpu.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnsgd_numba._core import cuda as backend
from bnsgd_numba._core.layouts import normalize_channel_axis
from bnsgd_numba.testing import NormalizationCase, normalization_cases
from bnsgd_numba.testing import checks as kit
from tests.gpu.conftest import to_device, to_host


class OnDevice:
    """A host-facing stand-in for a device layer, so that the kit's checks drive it.

    Inputs are copied to the device with the channel axis moved to where the
    GPU path reads it (last for layer_norm/rms_norm, 1 otherwise), outputs are
    copied back; ``weight``/``bias`` are host mirrors, the same arrays for the
    layer's life (the kit perturbs them in place), pushed to the device before
    every call; ``grad_weight``/``grad_bias`` are pulled back after backward.
    """

    def __init__(self, factory, num_features, dtype, channel_axis, params, device_axis):
        self.layer = factory(num_features, dtype=dtype, channel_axis=device_axis, **params)
        self.layer.to_device()
        self.axis, self.device_axis = channel_axis, device_axis
        self.eps = getattr(self.layer, "eps", None) or float(np.finfo(dtype).eps)
        self._pull()

    def _pull(self):
        for name in ("weight", "bias", "grad_weight", "grad_bias"):
            value = getattr(self.layer, name, None)
            mirror = getattr(self, name, None)
            if value is None or mirror is None:
                setattr(self, name, None if value is None else to_host(value))
            else:  # in place: the kit holds on to layer.weight while it perturbs it
                mirror[...] = to_host(value)

    def _push(self):
        for name in ("weight", "bias"):
            value = getattr(self, name)
            if value is not None:
                getattr(self.layer, name).copy_to_device(np.ascontiguousarray(value))

    def _to_device(self, a):
        a = np.asarray(a)
        # the facade's own check: channel_axis must exist (the kit's rank-1 input)
        axis = normalize_channel_axis(self.axis, a.ndim)
        return to_device(np.ascontiguousarray(np.moveaxis(a, axis, self.device_axis)))

    def _from_device(self, a):
        return np.moveaxis(to_host(a), self.device_axis, self.axis)

    def forward(self, x, training=True):
        self._push()
        return self._from_device(self.layer.forward(self._to_device(x), training))

    def backward(self, dy):
        dx = self._from_device(self.layer.backward(self._to_device(dy)))
        self._pull()
        return dx

    def state_dict(self):
        self._push()
        return self.layer.state_dict()

    def load_state_dict(self, state):
        self.layer.load_state_dict(state)
        self._pull()


GPU_VARIANTS = [
    "layer_norm", "rms_norm", "group_norm", "instance_norm", "frozen_batch_norm",
    "ghost_batch_norm", "batch_renorm",
]  # fmt: skip


def _device_cases():
    cases = []
    # the first registered example of each variant: the simulator runs a Python
    # thread per CUDA thread, and the kit launches hundreds of kernels per check
    firsts = {}
    for case in normalization_cases(GPU_VARIANTS):
        firsts.setdefault(case.id.split("[")[0], case)
    for case in firsts.values():
        device_axis = -1 if case.id.startswith(("layer_norm", "rms_norm")) else 1

        def factory(num_features, *, dtype, channel_axis, _case=case, _axis=device_axis, **p):
            return OnDevice(_case.factory, num_features, dtype, channel_axis, p, _axis)

        cases.append(
            NormalizationCase(
                f"{case.id}@device",
                factory,
                case.params,
                case.standardizes,
                case.batch_statistics,
                case.min_rank,
            )  # fmt: skip
        )
    return cases


# Every check runs on every variant. Under the simulator (a Python thread per
# CUDA thread) the kit's full-size inputs take minutes per check
# (check_gradients runs two device forwards per input element), so there the
# checks take the smallest inputs each case accepts; on a real GPU
# (BNSGD_NUMBA_REAL_GPU=1) the kit's full-size ones.
KIT_CHECKS = [
    kit.check_rejects_bad_input,
    kit.check_state_dict_round_trip_layer,
    kit.check_gradients,
    kit.check_dtype_and_shape_preserved,
]


def _small_inputs(check, case):
    if check is kit.check_dtype_and_shape_preserved:
        return {"layouts": kit.SMALL_LAYOUTS}
    if check in (kit.check_gradients, kit.check_state_dict_round_trip_layer):
        spatial = (2,) * (max(2, case.min_rank) - 2)
        return {"shape": (2 if case.batch_statistics else 1, 3, *spatial)}
    return {}


def _kit_pairs():
    return [
        pytest.param(check, case, id=f"{case.id}-{check.__name__.removeprefix('check_')}")
        for case in _device_cases()
        for check in KIT_CHECKS
    ]


@pytest.mark.parametrize(("check", "case"), _kit_pairs())
def test_kit_on_the_device(check, case):
    check(case, **(_small_inputs(check, case) if backend.SIMULATOR else {}))
