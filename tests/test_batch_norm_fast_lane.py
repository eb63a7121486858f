"""The common call's fast lane and the kernels' memory test give the general path's results.

A plain call (C-contiguous NumPy arrays, Python scalars) is recognized by
``batch_norm._fast_lane`` and leaves the memory test to the kernel
(``_core.spans``); anything else takes the general path. Both must agree
bit for bit, and a kernel that finds arrays which may meet must hand the
call to the general path's exact test, which names them or clears them.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnsgd_numba as bn
from bnsgd_numba._core.spans import byte_span, written_meets
from bnsgd_numba.batch_norm import NonFiniteStatisticsError, _fast_lane


def _arguments(shape, channel_axis=1, dtype=np.float32):
    rng = np.random.default_rng(7)
    channels = shape[channel_axis]
    return {
        "x": rng.standard_normal(shape).astype(dtype) * 3 + 1,
        "weight": rng.uniform(0.5, 2, channels).astype(dtype),
        "bias": rng.standard_normal(channels).astype(dtype),
        "running_mean": rng.standard_normal(channels).astype(dtype),
        "running_var": rng.uniform(0.5, 2, channels).astype(dtype),
    }


def _copies(arguments):
    return {name: value.copy() for name, value in arguments.items()}


@pytest.mark.parametrize("shape, channel_axis", [((32, 64), 1), ((4, 3, 5), 1), ((4, 5, 3), -1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_fast_lane_and_the_general_path_agree_bit_for_bit(shape, channel_axis, dtype):
    arguments = _arguments(shape, channel_axis, dtype)
    assert (
        _fast_lane.forward_arguments(
            *arguments.values(), True, 0.1, 1e-5, channel_axis, None, "raise"
        )
        is not None
    )
    fast, general = _copies(arguments), _copies(arguments)
    for training in (True, False):
        y_fast = bn.batch_norm_forward(**fast, training=training, channel_axis=channel_axis)
        # a NumPy scalar is valid, but never the fast lane's
        y_general = bn.batch_norm_forward(
            **general, training=np.bool_(training), channel_axis=channel_axis
        )
        for got, expected in zip(y_fast, y_general, strict=True):
            np.testing.assert_array_equal(got, expected)
    for name in ("running_mean", "running_var"):
        np.testing.assert_array_equal(fast[name], general[name])
    dy = np.random.default_rng(8).standard_normal(shape).astype(dtype)
    saved = bn.batch_norm_forward(**fast, training=True, channel_axis=channel_axis)
    args = (dy, fast["x"], fast["weight"], saved.save_mean, saved.save_invstd)
    assert _fast_lane.backward_arguments(*args, True, channel_axis, None) is not None
    grads_fast = bn.batch_norm_backward(*args, channel_axis=channel_axis)
    grads_general = bn.batch_norm_backward(
        *args, training=np.bool_(True), channel_axis=channel_axis
    )
    for got, expected in zip(grads_fast, grads_general, strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "change",
    [
        {"momentum": np.float64(0.1)},
        {"eps": 1},
        {"training": np.bool_(True)},
        {"channel_axis": np.int64(1)},
        {"x": "fortran"},
        {"x": "big-endian"},
        {"running_mean": "read-only"},
    ],
    ids=lambda change: next(iter(change)) + "=" + str(next(iter(change.values()))),
)
def test_anything_but_the_common_case_leaves_the_fast_lane(change):
    arguments = {**_arguments((8, 4)), "training": True, "momentum": 0.1, "eps": 1e-5}
    arguments.update({"channel_axis": 1, "out": None, "on_nonfinite": "raise"})
    ((name, value),) = change.items()
    if value == "fortran":
        value = np.asfortranarray(arguments["x"])
    elif value == "big-endian":
        value = arguments["x"].astype(">f4")
    elif value == "read-only":
        value = arguments["running_mean"].copy()
        value.flags.writeable = False
    arguments[name] = value
    assert _fast_lane.forward_arguments(*arguments.values()) is None


def test_interleaved_vectors_share_a_span_but_no_element_and_still_run():
    # weight and running_mean interleaved in one buffer: their byte spans
    # meet, so the kernel writes nothing and the general path's exact test
    # clears them; the results are those of separate arrays
    arguments = _arguments((16, 5))
    separate = _copies(arguments)
    buffer = np.empty(10, np.float32)
    buffer[0::2], buffer[1::2] = arguments["weight"], arguments["running_mean"]
    interleaved = {**arguments, "weight": buffer[0::2], "running_mean": buffer[1::2]}
    got = bn.batch_norm_forward(**interleaved, training=True)
    expected = bn.batch_norm_forward(**separate, training=True)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(buffer[1::2], separate["running_mean"])


@pytest.mark.parametrize("training", [True, False])
def test_out_meeting_x_in_the_fast_lane_is_named_and_nothing_is_written(training):
    arguments = _arguments((16, 5))
    before = _copies(arguments)
    with pytest.raises(ValueError, match="out overlaps the input x"):
        bn.batch_norm_forward(**arguments, training=training, out=arguments["x"])
    for name, value in before.items():
        np.testing.assert_array_equal(arguments[name], value)


def test_byte_spans_of_strided_reversed_and_empty_arrays():
    a = np.zeros(10, np.float64)
    start = a.ctypes.data
    assert byte_span(a) == (start, start + 80)
    assert byte_span(a[::-1]) == (start, start + 80)
    assert byte_span(a[2::3]) == (start + 16, start + 16 + 6 * 8 + 8)
    assert byte_span(a[:0]) == (0, 0)
    spans = np.array([byte_span(a[:5]), byte_span(a[5:]), byte_span(a[4:6])])
    assert not written_meets(spans[:1], spans[1:2])  # side by side
    assert written_meets(spans[:1], spans[2:])  # a shared element
    assert written_meets(spans[:2], spans[:0]) is False  # two written, apart
    assert written_meets(spans[[0, 2]], spans[:0])  # two written, meeting
    empty = np.array([byte_span(a[:0])])
    assert not written_meets(empty, spans)


ENTRY_PARALLEL_ARGUMENT = {"forward_entry": 14, "backward_entry": 11}
"""Position of the ``parallel`` flag in each kernel entry's arguments."""


def record_entries(monkeypatch, record):
    """Make every kernel entry (the fast lane) call ``record(name, build, parallel, status)``.

    ``build`` is ``"serial"`` for the serial build, ``"parallel"`` for any
    other (the parallel build, or the wrapper that runs it one region at a
    time); ``parallel`` is the flag the entry was given.
    """
    from bnsgd_numba._core.layouts import NCS, RC
    from bnsgd_numba.batch_norm import functional

    def recording(name, build, kind):
        def call(*args):
            status = build(*args)
            record(name, kind, args[ENTRY_PARALLEL_ARGUMENT[name]], int(status))
            return status

        return call

    class RecordingPair:
        def __init__(self, name, pair):
            self.name, self.pair = name, pair

        def for_size(self, elements):
            build = self.pair.for_size(elements)
            kind = "serial" if build is self.pair.serial else "parallel"
            return recording(self.name, build, kind)

    for name, kept in (
        ("forward_entry", "_FORWARD_ENTRIES"),
        ("backward_entry", "_BACKWARD_ENTRIES"),
    ):
        wrapped = {}
        for layout in (NCS, RC):
            pair = functional.fused_pair(name, layout)
            wrapped[layout] = (recording(name, pair.serial, "serial"), RecordingPair(name, pair))
        monkeypatch.setattr(functional, kept, wrapped)


@pytest.fixture
def entry_statuses(monkeypatch):
    """The status of every whole-call kernel entry (the serial fast lane) run."""
    statuses = []
    record_entries(
        monkeypatch, lambda name, build, parallel, status: statuses.append((name, status))
    )
    return statuses


ENTRY_CASES = [
    ((32, 64), 1),
    ((6, 3, 5), 1),
    ((6, 5, 3), -1),
    ((2, 3, 4, 5), 1),
    ((2, 4, 5, 3), 3),
    ((2, 1), 1),
    # over config.CPU_SERIAL_BELOW values: the parallel builds
    ((130, 784), 1),
    ((2, 16, 64, 64), 1),
    ((2, 64, 64, 16), -1),
]


@pytest.mark.parametrize("shape, channel_axis", ENTRY_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("given", ["all", "no affine", "no running statistics"])
def test_common_calls_run_in_one_kernel_entry_with_the_general_paths_bits(
    entry_statuses, shape, channel_axis, dtype, given
):
    arguments = _arguments(shape, channel_axis, dtype)
    if given == "no affine":
        arguments["weight"] = arguments["bias"] = None
    elif given == "no running statistics":
        arguments["running_mean"] = arguments["running_var"] = None
    fast, general = _copies_or_none(arguments), _copies_or_none(arguments)
    trainings = (True,) if given == "no running statistics" else (True, False)
    for training in trainings:
        y_fast = bn.batch_norm_forward(**fast, training=training, channel_axis=channel_axis)
        y_general = bn.batch_norm_forward(
            **general, training=np.bool_(training), channel_axis=channel_axis
        )
        for got, expected in zip(y_fast, y_general, strict=True):
            np.testing.assert_array_equal(got, expected)
            assert got.dtype is np.dtype(dtype)
    for name in ("running_mean", "running_var"):
        np.testing.assert_array_equal(fast[name], general[name])
    dy = np.random.default_rng(8).standard_normal(shape).astype(dtype)
    saved = bn.batch_norm_forward(**fast, training=True, channel_axis=channel_axis)
    args = (dy, fast["x"], fast["weight"], saved.save_mean, saved.save_invstd)
    grads_fast = bn.batch_norm_backward(*args, channel_axis=channel_axis)
    grads_general = bn.batch_norm_backward(
        *args, training=np.bool_(True), channel_axis=channel_axis
    )
    for got, expected in zip(grads_fast, grads_general, strict=True):
        np.testing.assert_array_equal(got, expected)
    # every public call with Python scalars ran the entry, to the end
    assert [name for name, _ in entry_statuses] == ["forward_entry"] * (len(trainings) + 1) + [
        "backward_entry"
    ]
    assert all(status == 0 for _, status in entry_statuses)


def _copies_or_none(arguments):
    return {name: None if value is None else value.copy() for name, value in arguments.items()}


REFUSED_SHAPES = {
    "weight length": (dict(weight=np.ones(3, np.float32)), "weight"),
    "bias length": (dict(bias=np.ones(6, np.float32)), "bias"),
    "running_var length": (dict(running_var=np.ones(2, np.float32)), "running_var"),
    "one value per channel": (dict(x=np.ones((1, 4), np.float32)), "more than 1 value"),
    "empty batch": (dict(x=np.ones((0, 4), np.float32)), None),
}


@pytest.mark.parametrize("case", sorted(REFUSED_SHAPES))
def test_shapes_the_entry_refuses_go_to_the_general_path_with_nothing_written(entry_statuses, case):
    from bnsgd_numba.batch_norm._cpu import NOT_COMMON

    overrides, message = REFUSED_SHAPES[case]
    arguments = {**_arguments((8, 4)), **overrides}
    before = _copies(arguments)
    if message is None:  # valid: the general path's empty batch
        result = bn.batch_norm_forward(**arguments, training=True)
        assert result.y.shape == arguments["x"].shape
    else:
        with pytest.raises(ValueError, match=message):
            bn.batch_norm_forward(**arguments, training=True)
    for name, value in before.items():
        np.testing.assert_array_equal(arguments[name], value, err_msg=name)
    assert entry_statuses == [("forward_entry", NOT_COMMON)]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dy": np.ones((8, 5), np.float32)}, "dy"),
        ({"save_mean": np.ones(5, np.float32)}, "save_mean"),
        ({"weight": np.ones(2, np.float32)}, "weight"),
    ],
    ids=["dy shape", "save_mean length", "weight length"],
)
def test_backward_shapes_the_entry_refuses_are_named(entry_statuses, change, message):
    from bnsgd_numba.batch_norm._cpu import NOT_COMMON

    arguments = _arguments((8, 4))
    saved = bn.batch_norm_forward(**arguments, training=True)
    entry_statuses.clear()
    call = {
        "dy": np.ones((8, 4), np.float32),
        "x": arguments["x"],
        "weight": arguments["weight"],
        "save_mean": saved.save_mean,
        "save_invstd": saved.save_invstd,
        **change,
    }
    out = np.full((8, 4), 7.0, np.float32)
    with pytest.raises(ValueError, match=message):
        bn.batch_norm_backward(**call, out=out)
    np.testing.assert_array_equal(out, 7.0)
    assert entry_statuses == [("backward_entry", NOT_COMMON)]


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_non_finite_statistics_in_the_entry_are_reported_as_by_the_general_path(
    entry_statuses, policy
):
    import warnings

    arguments = _arguments((8, 4))
    arguments["x"][3, 2] = np.nan
    before = _copies(arguments)
    out = np.full((8, 4), 7.0, np.float32)
    if policy == "raise":
        with pytest.raises(NonFiniteStatisticsError) as info:
            bn.batch_norm_forward(**arguments, training=True, out=out)
        assert info.value.channels.tolist() == [2]
        np.testing.assert_array_equal(out, 7.0)
    else:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            bn.batch_norm_forward(**arguments, training=True, out=out, on_nonfinite="skip")
        assert [w.category for w in record] == [RuntimeWarning]
        assert record[0].filename == __file__  # the warning points at the caller
        assert np.isnan(out[:, 2]).all() and np.isfinite(out[:, [0, 1, 3]]).all()
    for name in ("running_mean", "running_var"):
        np.testing.assert_array_equal(arguments[name], before[name])
    assert entry_statuses == [("forward_entry", 1)]
