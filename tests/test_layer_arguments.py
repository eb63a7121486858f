"""Every layer checks its arguments as strictly as the functional API, naming them.

Constructor arguments, ``forward``'s ``training`` and ``x``, and
``load_state_dict``'s ``state``: a bad one raises ``TypeError``/``ValueError``
naming it before anything is written. Also ``bias=False`` (PyTorch's weight
without a bias) and where the warnings of ``on_nonfinite="skip"`` point.
"""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
import torch

import bnsgd_numba as bn
from bnsgd_numba._core.layer import NormLayer
from bnsgd_numba.batch_norm.layer import BatchNorm
from bnsgd_numba.distributed.sync_batch_norm import SyncBatchNorm
from bnsgd_numba.normalizations.batch_renorm import BatchRenorm
from bnsgd_numba.normalizations.frozen_batch_norm import FrozenBatchNorm
from bnsgd_numba.normalizations.ghost_batch_norm import GhostBatchNorm
from bnsgd_numba.normalizations.group_norm import GroupNorm
from bnsgd_numba.normalizations.instance_norm import InstanceNorm
from bnsgd_numba.normalizations.layer_norm import LayerNorm
from bnsgd_numba.normalizations.rms_norm import RMSNorm

pytestmark = pytest.mark.usefixtures("warm_batch_norm")


def _comm_self():
    mpi = pytest.importorskip("mpi4py.MPI", reason="needs the mpi extra")
    return mpi.COMM_SELF


def _sync_batch_norm(channels, **kwargs):
    return SyncBatchNorm(channels, comm=_comm_self(), timeout=None, **kwargs)


# name -> factory(channels, **keywords): every layer, 3 channels on axis 1 of (4, 3, 5)
LAYERS = {
    "BatchNorm": lambda c, **k: BatchNorm(c, **k),
    "BatchNorm-plain": lambda c, **k: BatchNorm(c, affine=False, track_running_stats=False, **k),
    "SyncBatchNorm": _sync_batch_norm,
    "BatchRenorm": lambda c, **k: BatchRenorm(c, **k),
    "FrozenBatchNorm": lambda c, **k: FrozenBatchNorm(c, **k),
    "GhostBatchNorm": lambda c, **k: GhostBatchNorm(c, virtual_batch_size=2, **k),
    "GroupNorm": lambda c, **k: GroupNorm(1, c, **k),
    "InstanceNorm": lambda c, **k: InstanceNorm(c, affine=True, track_running_stats=True, **k),
    "LayerNorm": lambda c, **k: LayerNorm(c, **{"channel_axis": 1, **k}),
    "RMSNorm": lambda c, **k: RMSNorm(c, **{"channel_axis": 1, **k}),
}
SHAPE = (4, 3, 5)


def _snapshot(layer):
    state = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    for key in ("grad_weight", "grad_bias"):
        value = getattr(layer, key, None)
        if value is not None:
            state[key] = np.array(value, copy=True)
    state["num_batches_tracked"] = getattr(layer, "num_batches_tracked", 0)
    return state


def _assert_unchanged(layer, before):
    after = _snapshot(layer)
    assert after.keys() == before.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def _trained(name, dtype=np.float32):
    """A layer after one training step, with non-trivial parameters and state."""
    layer = LAYERS[name](3, dtype=dtype)
    rng = np.random.default_rng(0)
    for key in ("weight", "bias"):
        value = getattr(layer, key, None)
        if value is not None:
            value[...] = rng.uniform(0.5, 1.5, value.shape)
    x = rng.standard_normal(SHAPE).astype(dtype)
    layer.forward(x, True)
    layer.backward(np.ones_like(x))
    return layer, x


# -- constructor arguments ----------------------------------------------------------------

CHANNEL_AXES = [(1.5, TypeError), (True, TypeError), ("1", TypeError), (0, ValueError)]


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize(("value", "error"), CHANNEL_AXES, ids=repr)
def test_channel_axis_must_be_a_nonzero_integer(name, value, error):
    # BatchNorm(3, channel_axis=1.5) used to become channel_axis=1
    with pytest.raises(error, match="channel_axis"):
        LAYERS[name](3, channel_axis=value)


FLAGS = {
    "BatchNorm": ("affine", "bias", "track_running_stats"),
    "SyncBatchNorm": ("affine", "bias", "track_running_stats"),
    "BatchRenorm": ("affine", "bias"),
    "GhostBatchNorm": ("affine", "bias", "track_running_stats"),
    "GroupNorm": ("affine",),
    "InstanceNorm": ("affine", "track_running_stats"),
    "LayerNorm": ("elementwise_affine", "bias"),
    "RMSNorm": ("elementwise_affine",),
}


@pytest.mark.parametrize(
    ("name", "flag"), [(name, flag) for name, flags in FLAGS.items() for flag in flags]
)
@pytest.mark.parametrize("value", ["False", 1, None, np.array([True])], ids=repr)
def test_flags_must_be_bools(name, flag, value):
    # bool("False") is True: a string used to turn the option on
    factory = {"BatchNorm": BatchNorm, "InstanceNorm": InstanceNorm}.get(name, LAYERS[name])
    with pytest.raises(TypeError, match=flag):
        factory(3, **{flag: value})
    layer = factory(3, **{flag: np.False_})  # a NumPy bool is a bool
    assert getattr(layer, flag) in (False, None)  # bias=False leaves bias None


@pytest.mark.parametrize(
    ("factory", "argument", "value", "error"),
    [
        (lambda v: BatchNorm(3, on_nonfinite=v), "on_nonfinite", np.array(["raise"]), TypeError),
        (lambda v: BatchNorm(3, on_nonfinite=v), "on_nonfinite", None, TypeError),
        (lambda v: BatchNorm(3, dtype=v), "dtype", None, TypeError),
        (lambda v: LayerNorm(4, dtype=v), "dtype", None, TypeError),
        (lambda v: BatchRenorm(3, warmup_steps=v), "warmup_steps", True, TypeError),
        (lambda v: BatchRenorm(3, r_max_ramp_steps=v), "r_max_ramp_steps", False, TypeError),
        (lambda v: LayerNorm(v), "normalized_shape", True, TypeError),
        (lambda v: LayerNorm(v), "normalized_shape", (True, 4), TypeError),
        (lambda v: RMSNorm(v), "normalized_shape", (4, False), TypeError),
    ],
    ids=lambda v: repr(v) if not callable(v) else "",
)
def test_other_constructor_arguments_are_checked(factory, argument, value, error):
    with pytest.raises(error, match=argument):
        factory(value)


# -- forward's arguments -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("training", ["False", None, 1, 0.0, np.array([False])], ids=repr)
def test_training_must_be_a_bool_and_nothing_changes(name, training):
    # layer(x, training='False') used to train
    layer, x = _trained(name)
    before = _snapshot(layer)
    with pytest.raises(TypeError, match="training"):
        layer(x, training=training)
    with pytest.raises(TypeError, match="training"):
        layer.forward(x, training)
    _assert_unchanged(layer, before)
    np.testing.assert_array_equal(layer(x, np.False_), layer(x, False))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_an_input_with_other_channels_is_named_x_and_changes_nothing(name):
    # BatchNorm used to blame its weight (or running_mean): "weight: expected shape (4,)"
    layer, _ = _trained(name)
    before = _snapshot(layer)
    what = "features" if name in ("LayerNorm", "RMSNorm") else "channels"
    for channels in (2, 4):
        x = np.ones((4, channels, 5), np.float32)
        with pytest.raises(ValueError, match=rf"x: expected 3 {what} on axis 1, got shape"):
            layer.forward(x, True)
    _assert_unchanged(layer, before)


def test_batch_norm_without_parameters_or_statistics_still_checks_the_channels():
    layer = BatchNorm(3, affine=False, track_running_stats=False)
    with pytest.raises(ValueError, match="^x: expected 3 channels"):
        layer(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match="^x: expected 3 channels"):
        layer(np.ones((4, 5), np.float32), False)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_another_float_dtype_is_named_x_with_the_fix(name):
    layer, x = _trained(name)
    before = _snapshot(layer)
    message = (
        "x: dtype float64 does not match the layer's float32; cast x with "
        "x.astype(np.float32) or build the layer with dtype=np.float64"
    )
    with pytest.raises(TypeError) as info:
        layer.forward(x.astype(np.float64), True)
    assert message in str(info.value)  # SyncBatchNorm adds the rank
    with pytest.raises(TypeError, match=r"x: dtype int64 does not match .*x.astype\(np.float32\)"):
        layer.forward(x.astype(np.int64), True)
    _assert_unchanged(layer, before)


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize(
    ("x", "message"),
    [
        ([[1.0, 2.0], [1.0]], "x: expected an array"),
        (None, "x: expected an array of real numbers"),
        (np.ones((4, 3), complex), "x: expected an array of real numbers"),
    ],
    ids=["ragged list", "None", "complex"],
)
def test_what_is_not_an_array_of_numbers_is_named_x(name, x, message):
    layer, _ = _trained(name)
    before = _snapshot(layer)
    with pytest.raises(TypeError, match=message):
        layer.forward(x, True)
    _assert_unchanged(layer, before)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: BatchNorm(4, channel_axis=-2),
        lambda: BatchNorm(4, channel_axis=-2, affine=False, track_running_stats=False),
        lambda: GhostBatchNorm(4, virtual_batch_size=2, channel_axis=-2),
    ],
    ids=["BatchNorm", "BatchNorm-plain", "GhostBatchNorm"],
)
def test_a_negative_channel_axis_that_lands_on_the_batch_is_refused(factory):
    # (4, 3) with channel_axis=-2 is the batch axis: BatchNorm used to normalize over it
    layer = factory()
    before = _snapshot(layer)
    with pytest.raises(ValueError, match="batch axis"):
        layer(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
    _assert_unchanged(layer, before)
    assert layer(np.ones((2, 4, 3), np.float32)).shape == (2, 4, 3)


# -- load_state_dict ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("state", [None, [("weight", 1)], "weight", 3], ids=repr)
def test_load_state_dict_takes_a_mapping_and_loads_nothing_else(name, state):
    layer, _ = _trained(name)
    before = _snapshot(layer)
    with pytest.raises(TypeError, match="^state must be a mapping"):
        layer.load_state_dict(state)
    _assert_unchanged(layer, before)
    layer.load_state_dict(collections.OrderedDict(layer.state_dict()))  # any mapping


def test_load_state_dict_reports_keys_of_any_type():
    layer, _ = _trained("BatchNorm")
    state = layer.state_dict()
    state[1] = state["extra"] = np.zeros(3)
    with pytest.raises(KeyError, match=r"unexpected keys \['extra', 1\]"):
        layer.load_state_dict(state)


def test_load_state_dict_names_an_entry_numpy_cannot_read():
    layer, _ = _trained("BatchNorm")
    before = _snapshot(layer)
    state = layer.state_dict()
    state["running_var"] = [[1.0], [1.0, 2.0]]
    with pytest.raises(TypeError, match=r"state_dict\['running_var'\]"):
        layer.load_state_dict(state)
    _assert_unchanged(layer, before)


def test_frozen_batch_norm_ignores_num_batches_tracked_of_any_mapping():
    layer, _ = _trained("BatchNorm")
    frozen = FrozenBatchNorm(3)
    frozen.load_state_dict(collections.OrderedDict(layer.state_dict()))
    np.testing.assert_array_equal(frozen.running_var, layer.running_var)
    with pytest.raises(TypeError, match="^state must be a mapping"):
        frozen.load_state_dict(list(layer.state_dict().items()))


# -- bias=False, as torch.nn.BatchNorm*d(bias=False) --------------------------------------


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (4, 3, 2, 3)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_without_bias_matches_torch(shape, momentum):
    rng = np.random.default_rng(6)
    ours = bn.BatchNorm(3, bias=False, momentum=momentum, dtype=np.float64)
    cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}[len(shape)]
    theirs = cls(3, bias=False, momentum=momentum, dtype=torch.float64)
    assert theirs.bias is None and ours.bias is None and ours.grad_bias is None
    ours.weight[:] = rng.uniform(0.5, 1.5, 3)
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(ours.weight))
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for step in range(4):
        training = step != 2
        theirs.train(training)
        x = rng.normal(step, 1 + step, shape)
        dy = rng.normal(size=shape)
        xt = torch.from_numpy(x).requires_grad_()
        yt = theirs(xt)
        yt.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(ours(x, training), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ours.grad_weight, theirs.weight.grad.numpy(), rtol=1e-10)
        theirs.weight.grad = None
        for key, value in theirs.state_dict().items():
            np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), rtol=1e-12)


def test_batch_norm_without_bias_has_one_parameter_everywhere():
    layer = bn.create_normalization("batch_norm", 3, bias=False)
    assert isinstance(layer, BatchNorm)
    assert layer.parameters() == [layer.weight] and layer.gradients() == [layer.grad_weight]
    assert set(layer.state_dict()) == {
        "weight", "running_mean", "running_var", "num_batches_tracked",
    }  # fmt: skip
    assert "affine=True, bias=False," in repr(layer)
    with pytest.raises(KeyError, match=r"unexpected keys \['bias'\]"):
        layer.load_state_dict(BatchNorm(3).state_dict())
    plain = BatchNorm(3, affine=False, bias=False)
    assert plain.parameters() == [] and plain.weight is None and plain.bias is None


@pytest.mark.parametrize(
    "factory",
    [
        lambda **k: BatchNorm(3, **k),
        lambda **k: BatchRenorm(3, warmup_steps=0, r_max_ramp_steps=0, d_max_ramp_steps=0, **k),
        lambda **k: GhostBatchNorm(3, virtual_batch_size=2, **k),
        lambda **k: _sync_batch_norm(3, **k),
    ],
    ids=["BatchNorm", "BatchRenorm", "GhostBatchNorm", "SyncBatchNorm"],
)
def test_without_bias_is_the_layer_with_a_zero_bias_bitwise(factory):
    rng = np.random.default_rng(8)
    weight = rng.uniform(0.5, 1.5, 3)
    with_bias = factory(dtype=np.float64)
    without = factory(dtype=np.float64, bias=False)
    with_bias.weight[:] = without.weight[:] = weight
    for training in (True, True, False):
        x = rng.normal(2, 3, (6, 3, 4))
        dy = rng.standard_normal(x.shape)
        np.testing.assert_array_equal(without(x, training), with_bias(x, training))
        np.testing.assert_array_equal(without.backward(dy), with_bias.backward(dy))
        np.testing.assert_array_equal(without.grad_weight, with_bias.grad_weight)
        assert without.grad_bias is None
        state = with_bias.state_dict()
        del state["bias"]
        for key, value in without.state_dict().items():
            np.testing.assert_array_equal(value, state[key], err_msg=key)


# -- warnings point at the user's call ----------------------------------------------------


def _skipping(name):
    return {
        "BatchNorm": lambda: BatchNorm(3, on_nonfinite="skip"),
        "BatchRenorm": lambda: BatchRenorm(3, on_nonfinite="skip"),
        "GhostBatchNorm": lambda: GhostBatchNorm(3, virtual_batch_size=2, on_nonfinite="skip"),
        "InstanceNorm": lambda: InstanceNorm(3, track_running_stats=True, on_nonfinite="skip"),
    }[name]()


@pytest.mark.parametrize("name", ["BatchNorm", "BatchRenorm", "GhostBatchNorm", "InstanceNorm"])
@pytest.mark.parametrize("call", ["forward", "__call__"])
def test_the_nonfinite_warning_points_at_the_callers_line(name, call):
    layer = _skipping(name)
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    x[-1, 1, 0] = np.nan
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        if call == "forward":
            layer.forward(x)
        else:
            layer(x)
    assert [w.category for w in record] == [RuntimeWarning]
    assert record[0].filename == __file__, record[0].filename
    assert layer.skipped_updates == 1


# -- backward overwrites, and says so -----------------------------------------------------


@pytest.mark.parametrize(
    "cls",
    [BatchNorm, SyncBatchNorm, BatchRenorm, FrozenBatchNorm, GhostBatchNorm, GroupNorm,
     InstanceNorm, LayerNorm, RMSNorm, NormLayer],
    ids=lambda cls: cls.__name__,
)  # fmt: skip
def test_backward_docstrings_say_the_gradients_are_overwritten_not_accumulated(cls):
    text = " ".join(((cls.backward if cls is not NormLayer else cls).__doc__ or "").split())
    assert "overwrit" in text and "accumulat" in text and "PyTorch" in text
