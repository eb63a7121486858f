"""The one base of the normalization layers (``_core.layer.NormLayer``) and the plugin hook."""

from __future__ import annotations

import numpy as np
import pytest

import bnsgd_numba
from bnsgd_numba._core.layer import NormLayer
from bnsgd_numba.batch_norm.layer import BatchNorm
from bnsgd_numba.distributed.sync_batch_norm import SyncBatchNorm
from bnsgd_numba.normalizations import _base
from bnsgd_numba.normalizations.batch_renorm import BatchRenorm
from bnsgd_numba.normalizations.frozen_batch_norm import FrozenBatchNorm
from bnsgd_numba.normalizations.ghost_batch_norm import GhostBatchNorm
from bnsgd_numba.normalizations.group_norm import GroupNorm
from bnsgd_numba.normalizations.instance_norm import InstanceNorm
from bnsgd_numba.normalizations.layer_norm import LayerNorm
from bnsgd_numba.normalizations.rms_norm import RMSNorm
from bnsgd_numba.testing import normalization_cases

CLASSES = [
    BatchNorm,
    SyncBatchNorm,
    BatchRenorm,
    FrozenBatchNorm,
    GhostBatchNorm,
    GroupNorm,
    InstanceNorm,
    LayerNorm,
    RMSNorm,
]
# What the base owns; a layer that wrote one of these out again would be the
# repetition the base removed. The overrides listed are the documented ones.
BASE_OWNED = (
    "parameters",
    "gradients",
    "state_dict",
    "load_state_dict",
    "to_device",
    "to_host",
    "on_device",
    "__repr__",
    "_check_side",
    "_set_gradients",
    "_saved_input",
    "_running_factor",
)
OVERRIDES = {
    (FrozenBatchNorm, "load_state_dict"),  # drops a BatchNorm's num_batches_tracked
    (SyncBatchNorm, "to_device"),  # host only
    (SyncBatchNorm, "__repr__"),  # adds the number of ranks
}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_every_layer_derives_from_the_one_base_and_writes_none_of_it_again(cls):
    assert issubclass(cls, NormLayer)
    for klass in cls.__mro__[: cls.__mro__.index(NormLayer)]:
        for name in BASE_OWNED:
            if name in vars(klass):
                assert (klass, name) in OVERRIDES, f"{klass.__name__}.{name}"


def test_every_registered_builtin_layer_is_a_norm_layer():
    for case in normalization_cases():
        if case.id.startswith("sync_batch_norm"):
            continue  # needs MPI: checked by class above
        layer = case.factory(3, dtype=np.float64, channel_axis=1, **case.params)
        assert isinstance(layer, NormLayer), case.id


REPRS = [
    (
        BatchNorm(4, momentum=None, affine=False, channel_axis=-1, dtype=np.float64),
        "BatchNorm(4, eps=1e-05, momentum=None, affine=False, track_running_stats=True, "
        "channel_axis=-1, dtype=float64)",
    ),
    (
        InstanceNorm(3, affine=True, track_running_stats=True),
        "InstanceNorm(3, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True, "
        "dtype=float32)",
    ),
    (
        BatchRenorm(2, r_max=2.0, warmup_steps=7),
        "BatchRenorm(2, eps=1e-05, momentum=0.1, r_max=2.0, d_max=5.0, warmup_steps=7, "
        "dtype=float32)",
    ),
    (
        GhostBatchNorm(5, virtual_batch_size=4, eps=1e-3),
        "GhostBatchNorm(5, virtual_batch_size=4, eps=0.001, momentum=0.1, affine=True, "
        "dtype=float32)",
    ),
    (FrozenBatchNorm(6, dtype=np.float64), "FrozenBatchNorm(6, eps=1e-05, dtype=float64)"),
    (GroupNorm(2, 6, affine=False), "GroupNorm(2, 6, eps=1e-05, affine=False, dtype=float32)"),
    (
        LayerNorm((3, 4), bias=False),
        "LayerNorm((3, 4), eps=1e-05, elementwise_affine=True, bias=False, dtype=float32)",
    ),
    (RMSNorm(8), "RMSNorm((8,), eps=None, elementwise_affine=True, dtype=float32)"),
]


@pytest.mark.parametrize(("layer", "text"), REPRS, ids=[type(layer).__name__ for layer, _ in REPRS])
def test_repr_shows_the_constructor_arguments(layer, text):
    assert repr(layer) == text


CALLABLE_WITH_OUT = [
    BatchNorm(3, dtype=np.float64),
    InstanceNorm(3, affine=True, dtype=np.float64),
    GroupNorm(3, 3, dtype=np.float64),
    LayerNorm(4, dtype=np.float64),
    RMSNorm(4, dtype=np.float64),
]


@pytest.mark.parametrize("layer", CALLABLE_WITH_OUT, ids=lambda v: type(v).__name__)
def test_calling_a_layer_passes_out_to_forward(layer):
    x = np.random.default_rng(0).standard_normal((4, 3, 4))
    out = np.empty_like(x)
    result = layer(x, True, out=out)
    assert result is out
    np.testing.assert_array_equal(out, layer.forward(x, True))


def test_registration_hook_registers_fresh_metadata_on_every_call():
    def factory(num_features, **params):
        return num_features

    hook = _base.registration_hook("mine", factory, standardizes=False, examples=[{"eps": 1e-3}])
    calls = []
    hook(lambda name, fn, **metadata: calls.append((name, fn, metadata)))
    calls[0][2]["examples"][0]["eps"] = 99.0
    calls[0][2]["examples"].append({})
    hook(lambda name, fn, **metadata: calls.append((name, fn, metadata)))
    assert calls[1] == ("mine", factory, {"standardizes": False, "examples": [{"eps": 1e-3}]})
    assert hook.__name__ == "bnsgd_register_normalizations"
    assert hook.__module__ == __name__
    assert hook.__doc__


def test_registration_hook_is_a_pluggy_hook_the_registry_loads():
    def factory(num_features, **params):
        return BatchNorm(num_features, **params)

    class Plugin:
        bnsgd_register_normalizations = staticmethod(
            _base.registration_hook("hooked_norm", factory, standardizes=True)
        )

    bnsgd_numba.register_plugin(Plugin, name="hooked-norm-test")
    try:
        layer = bnsgd_numba.create_normalization("hooked_norm", 3)
        assert isinstance(layer, BatchNorm)
    finally:
        bnsgd_numba.unregister_plugin(Plugin)


class _TwoRanks:
    """Just enough of a communicator to construct a SyncBatchNorm and show it."""

    def Get_size(self):  # noqa: N802 (mpi4py's name)
        return 2

    Get_rank = Iallgather = Iallreduce = Ibcast = Abort = None


def test_sync_batch_norm_repr_adds_the_ranks():
    layer = SyncBatchNorm(3, comm=_TwoRanks(), timeout=None, affine=False)
    assert repr(layer) == (
        "SyncBatchNorm(3, eps=1e-05, momentum=0.1, affine=False, track_running_stats=True, "
        "channel_axis=1, dtype=float32) over 2 rank(s)"
    )
