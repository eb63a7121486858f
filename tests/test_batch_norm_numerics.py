"""The numerical promises of the BatchNorm kernels.

Constant channels, large offsets, non-finite batches, and results that do
not depend on the number of threads or on the serial/parallel build.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import numba
import numpy as np
import pytest

import bnsgd_numba as bn
from bnsgd_numba import config
from bnsgd_numba._core.layouts import rows_per_item
from bnsgd_numba._core.reductions import SHIFT_SAMPLE_DIVISOR
from tests import naive

pytestmark = pytest.mark.usefixtures("warm_batch_norm")

SHAPES = [
    ((16, 3), 1),
    ((4, 3, 5, 6), 1),
    ((4, 5, 6, 3), -1),
    ((64, 8, 40, 40), 1),
    ((5000, 8), 1),
    ((100, 1500), 1),
]


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("value", [0.0, 7.25, -1e4, 3.0e7, 1.7974005664190091, 0.1, 1 / 3])
def test_constant_channel_normalizes_to_exactly_bias(shape, axis, dtype, value):
    channels = shape[axis]
    x = np.full(shape, value, dtype)
    bias = np.linspace(-2, 2, channels).astype(dtype)
    weight = np.linspace(0.5, 3, channels).astype(dtype)
    running_mean, running_var = np.zeros(channels, dtype), np.ones(channels, dtype)
    y, save_mean, save_invstd = bn.batch_norm_forward(
        x, weight, bias, running_mean, running_var, training=True, channel_axis=axis
    )
    expected = np.moveaxis(np.broadcast_to(bias, np.moveaxis(x, axis, -1).shape), -1, axis)
    np.testing.assert_array_equal(y, expected)
    assert np.all(np.isfinite(running_var)) and np.all(running_var == np.asarray(0.9, dtype))
    dy = np.ones_like(x)
    dx = bn.batch_norm_backward(dy, x, weight, save_mean, save_invstd, channel_axis=axis).dx
    np.testing.assert_array_equal(dx, np.zeros_like(dx))


@pytest.mark.parametrize("shape,axis", SHAPES)
def test_float32_with_large_mean_and_small_spread_is_accurate(shape, axis):
    rng = np.random.default_rng(0)
    x = (1e4 + 1e-2 * rng.standard_normal(shape)).astype(np.float32)
    y = bn.batch_norm_forward(x, training=True, channel_axis=axis).y
    y_ref, _, _ = naive.batch_norm_forward(x, axis=axis)
    assert np.max(np.abs(y - y_ref)) <= 1e-3
    # stronger than the issue asks: a few float32 ulps of the output
    assert np.max(np.abs(y - y_ref)) <= 8 * np.finfo(np.float32).eps * np.max(np.abs(y_ref))


@pytest.mark.parametrize("shape", [(512, 3, 64), (100000, 3)])
def test_items_whose_first_rows_are_outliers_keep_float32_statistics_accurate(shape):
    # A float32 work item (an NCS item, or an RC moment task's row group)
    # sums deviations about the mean of its first rows (SHIFT_SAMPLE_DIVISOR):
    # those rows 100 standard deviations away from the rest, at a mean of
    # 1e4, are the worst case for that shift. Unshifted float64 sums would be
    # off by ~1e-4 of the variance here.
    from bnsgd_numba.batch_norm import _cpu

    x = (1e4 + 1e-2 * np.random.default_rng(1).standard_normal(shape)).astype(np.float32)
    layout = "ncs" if x.ndim == 3 else "rc"
    view = x.reshape(shape[0], 3, -1) if layout == "ncs" else x.reshape(-1, 3, 1)
    per_item = rows_per_item(view, layout, config.CPU_ITEM_ELEMENTS, config.CPU_RC_COLUMNS)
    if layout == "rc":
        per_item = _cpu._moment_groups(shape[0], per_item, x.itemsize)[2]
    sample = -(-per_item // SHIFT_SAMPLE_DIVISOR)
    assert 1 <= sample < per_item < shape[0]
    for start in range(0, shape[0], per_item):
        x[start : start + sample] += np.float32(1.0)
    y, save_mean, save_invstd = bn.batch_norm_forward(x, training=True)
    y_ref, mean_ref, invstd_ref = naive.batch_norm_forward(x)
    eps32 = np.finfo(np.float32).eps
    np.testing.assert_allclose(save_mean, mean_ref, rtol=eps32)
    np.testing.assert_allclose(save_invstd, invstd_ref, rtol=2 * eps32)
    assert np.max(np.abs(y - y_ref)) <= 8 * eps32 * np.max(np.abs(y_ref))


@pytest.mark.parametrize(
    "shape,axis", [((64, 8, 40, 40), 1), ((40, 40, 64, 8), -1), ((5000, 48), 1)]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_the_number_of_threads(shape, axis, dtype):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs at least 2 threads")
    rng = np.random.default_rng(1)
    x = (3 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)

    def run():
        channels = shape[axis]
        rm, rv = np.zeros(channels, dtype), np.ones(channels, dtype)
        out = bn.batch_norm_forward(x, None, None, rm, rv, training=True, channel_axis=axis)
        grads = bn.batch_norm_backward(
            dy, x, None, out.save_mean, out.save_invstd, channel_axis=axis
        )
        return [*out, *grads, rm, rv]

    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run()
        numba.set_num_threads(2)
        two = run()
    finally:
        numba.set_num_threads(previous)
    for a, b in zip(one, two, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize(
    "shape,axis",
    [((4, 3, 5, 6), 1), ((30, 7), 1), ((4, 5, 6, 3), -1), ((300, 1500), 1), ((300, 4, 500), 1)],
)
def test_serial_and_parallel_builds_agree_bitwise(shape, axis, monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)

    def run():
        out = bn.batch_norm_forward(x, training=True, channel_axis=axis)
        grads = bn.batch_norm_backward(
            dy, x, None, out.save_mean, out.save_invstd, channel_axis=axis
        )
        return [*out, *grads]

    monkeypatch.setattr(config, "CPU_SERIAL_BELOW", 0)
    parallel = run()
    monkeypatch.setattr(config, "CPU_SERIAL_BELOW", 10**12)
    serial = run()
    for a, b in zip(parallel, serial, strict=True):
        assert a.tobytes() == b.tobytes()


# Shapes with many work items of every kind: (N, C) inputs in several row
# groups and column strips (short and wide, tall and narrow), and NCS inputs
# whose backward is fused per channel group or, with channels of more than
# 1 MB, not fused.
_SPLIT_SHAPES = "[(300, 1500), (20, 3000), (5000, 48), (8, 64, 9, 9), (300, 4, 500)]"
_HASH_OUTPUTS = f"""
import hashlib, sys
import numpy as np
import bnsgd_numba as bn
from bnsgd_numba import config
config.CPU_SERIAL_BELOW = int(sys.argv[1])
digest = hashlib.sha256()
for dtype in (np.float32, np.float64):
    for shape in {_SPLIT_SHAPES}:
        rng = np.random.default_rng(3)
        x = (3 + rng.standard_normal(shape)).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        c = shape[1]
        w, b = rng.uniform(0.5, 2, c).astype(dtype), rng.uniform(-1, 1, c).astype(dtype)
        rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
        out = bn.batch_norm_forward(x, w, b, rm, rv, training=True)
        grads = bn.batch_norm_backward(dy, x, w, out.save_mean, out.save_invstd)
        for a in (*out, *grads, rm, rv):
            digest.update(a.tobytes())
print(digest.hexdigest())
"""


def test_two_dimensional_and_split_inputs_give_the_same_bits_on_any_threads_and_build():
    # Fresh processes, so the thread pool really has 1 or 2 threads whatever
    # this machine has; CPU_SERIAL_BELOW=0 forces the parallel builds.
    def run(threads, serial_below):
        env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
        done = subprocess.run(
            [sys.executable, "-c", _HASH_OUTPUTS, str(serial_below)],
            capture_output=True, text=True, env=env, timeout=600, check=True,
        )  # fmt: skip
        return done.stdout.strip()

    digests = {run(1, 0), run(2, 0), run(2, 10**12)}
    assert len(digests) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("path", ["fused", "short rows"])
def test_fused_and_short_row_backward_give_the_bits_of_the_separate_passes(dtype, training, path):
    # the fused pass (rows of a page or more) and the short rows' RC input
    # gradient (rows under SHORT_ROW_BYTES) against the plain NCS passes
    from bnsgd_numba.batch_norm import _cpu

    rng = np.random.default_rng(4)
    shape = (3, 20, 32, 33) if path == "fused" else (6, 20, 4, 8)
    n, s = shape[0], shape[2] * shape[3]
    x = (5 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    weight = rng.uniform(0.5, 2, 20).astype(dtype)
    out = bn.batch_norm_forward(x, weight, training=True)
    dx, dweight, dbias = bn.batch_norm_backward(
        dy, x, weight, out.save_mean, out.save_invstd, training=training
    )
    x3, dy3 = x.reshape(n, 20, s), dy.reshape(n, 20, s)
    if path == "fused":
        assert _cpu._fused_channels(n, 20, s, x.itemsize) > 0
    else:
        assert _cpu._short_rows(20, s, x.itemsize)
        longer = _cpu.SHORT_ROW_BYTES // x.itemsize + 1
        assert not _cpu._short_rows(1, longer, x.itemsize)  # rows over SHORT_ROW_BYTES
        assert not _cpu._short_rows(_cpu.SHORT_ROW_COLUMNS // s + 1, s, x.itemsize)
    # rows shorter than a page are never fused (see FUSED_ROW_BYTES)
    assert _cpu._fused_channels(n, 20, 4096 // x.itemsize - 1, x.itemsize) == 0
    rows = _cpu._item_rows(20, s, False, config.CPU_ITEM_ELEMENTS, config.CPU_RC_COLUMNS)
    sums = np.empty((3, 20))
    _cpu.gradient_sums_ncs.serial(dy3, x3, out.save_mean.astype(np.float64), rows, *sums)
    separate = np.empty((6, 20), dtype)
    _cpu.gradient_constants(
        *sums, weight, out.save_invstd, float(n * s), training, *separate
    )  # fmt: skip
    dy_scale, shift, xmu_scale, center_lo = separate[2:]
    dx_separate = np.empty_like(x3)
    _cpu.input_gradient_ncs.serial(
        dy3, x3, dx_separate, out.save_mean, center_lo, dy_scale, shift, xmu_scale
    )
    assert dx.tobytes() == dx_separate.tobytes()
    assert dweight.tobytes() == separate[0].tobytes()
    assert dbias.tobytes() == separate[1].tobytes()


def _page_aligned(shape, dtype, offset_bytes):
    # a C-contiguous array starting ``offset_bytes`` after a page boundary
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buffer = np.empty(size + 2 * 4096, dtype=np.uint8)
    start = -buffer.ctypes.data % 4096 + offset_bytes
    return buffer[start : start + size].view(dtype).reshape(shape)


def test_rows_alias_finds_page_strided_rows_that_start_together():
    from bnsgd_numba.batch_norm import _cpu

    a = _page_aligned((8, 1024), np.float32, 0)
    near = _page_aligned((8, 1024), np.float32, 32)
    far = _page_aligned((8, 1024), np.float32, 1024)
    assert _cpu._rows_alias(a, near, 4096)
    assert not _cpu._rows_alias(a, far, 4096)
    # rows of 784 float32 spread four rows over the page: never alias
    b = _page_aligned((8, 784), np.float32, 0)
    c = _page_aligned((8, 784), np.float32, 0)
    assert not _cpu._rows_alias(b, c, 784 * 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_rc_passes_give_the_same_bits_whether_rows_alias_or_not(dtype, channels_last):
    # rows of one page, four at a time or one at a time (see _cpu.ALIAS_BYTES):
    # dx written next to dy and x, and 1 KB away from them
    from bnsgd_numba.batch_norm import _cpu

    rng = np.random.default_rng(7)
    itemsize = np.dtype(dtype).itemsize
    columns = _cpu.PAGE_BYTES // itemsize
    # NCS: rows (i, c) of SHORT_ROW_BYTES, read as RC rows of a page
    spatial = (4, _cpu.SHORT_ROW_BYTES // itemsize // 4)
    shape = (9, columns) if channels_last else (9, columns // math.prod(spatial), *spatial)
    axis = -1 if channels_last else 1
    x = _page_aligned(shape, dtype, 0)
    dy = _page_aligned(shape, dtype, 0)
    x[...] = 2 + rng.standard_normal(shape)
    dy[...] = rng.standard_normal(shape)
    out = bn.batch_norm_forward(x, training=True, channel_axis=axis)
    results = []
    if not channels_last:
        assert _cpu._short_rows(shape[1], math.prod(spatial), itemsize)
    for offset, aliasing in ((0, True), (1024, False)):
        dx = _page_aligned(shape, dtype, offset)
        y = _page_aligned(shape, dtype, offset)
        rows = (dx.reshape(9, columns), dy.reshape(9, columns), _cpu.PAGE_BYTES)
        assert _cpu._rows_alias(*rows) is aliasing
        bn.batch_norm_backward(
            dy, x, None, out.save_mean, out.save_invstd, out=dx, channel_axis=axis
        )
        bn.batch_norm_forward(x, training=True, channel_axis=axis, out=y)
        results.append((dx.tobytes(), y.tobytes()))
    assert results[0] == results[1]
    assert results[0][1] == out.y.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("build", ["serial", "parallel"])
def test_narrow_rows_in_runs_give_the_bits_of_wide_rows(dtype, build):
    # rows of NARROW_ROW_BYTES or less run in runs of whole rows with tiled
    # constants; the same elements as wider rows (reshaped, the constants
    # tiled by hand) take the row-by-row loops: the bits must agree
    from bnsgd_numba.batch_norm import _cpu

    rng = np.random.default_rng(8)
    itemsize = np.dtype(dtype).itemsize
    channels = _cpu.NARROW_ROW_BYTES // itemsize // 4  # rows of 128 bytes
    copies = 4 * _cpu.NARROW_ROW_BYTES // (channels * itemsize)  # wide rows: 2 KB
    rows = 3 * copies * _cpu.TILE_BYTES // (channels * itemsize) // 2
    per_run = _cpu._tile_rows(rows, channels, itemsize)
    assert per_run > 0
    assert _cpu._tile_rows(rows // copies, channels * copies, itemsize) == 0
    # too few rows for the runs to pay: the row loops
    assert _cpu._tile_rows(_cpu.TILE_MIN_RUNS * per_run - 1, channels, itemsize) == 0
    assert _cpu._tile_rows(rows, 0, itemsize) == 0  # no channels: nothing to tile
    x, dy = (rng.standard_normal((rows, channels)).astype(dtype) for _ in range(2))
    constants = [rng.uniform(-2, 2, channels).astype(dtype) for _ in range(5)]
    wide = [np.tile(c, copies) for c in constants]
    normalize = getattr(_cpu.normalize_rc, build)
    input_gradient = getattr(_cpu.input_gradient_rc, build)
    rows_per_item = 40  # blocks that end inside a run
    y, y_wide = np.empty_like(x), np.empty((rows // copies, channels * copies), dtype)
    normalize(x, y, rows_per_item, *constants[:3])
    normalize(x.reshape(y_wide.shape), y_wide, rows_per_item, *wide[:3])
    assert y.tobytes() == y_wide.tobytes()
    dx, dx_wide = np.empty_like(x), np.empty_like(y_wide)
    input_gradient(dy, x, dx, rows_per_item, *constants)
    input_gradient(dy.reshape(dx_wide.shape), x.reshape(dx_wide.shape), dx_wide, 10, *wide)
    assert dx.tobytes() == dx_wide.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("build", ["serial", "parallel"])
@pytest.mark.parametrize("rows", [1, 5, 32])
def test_one_work_item_gives_the_bits_of_the_split_reduction(dtype, build, rows):
    # An (N, C) reduction of a single work item (the seed's (32, 784)) takes
    # a shortcut: no partial arrays, the merges into zeroed totals done in
    # place. The same columns split into strips take the general path, and
    # a column's bits do not depend on the strips: they must agree. Special
    # columns: constant, -0.0, NaN, +-inf, and for float64 values whose
    # squared mean overflows (M2 is then NaN in Chan's merge).
    from bnsgd_numba.batch_norm import _cpu

    channels = 40
    rng = np.random.default_rng(9)
    x = (3 + 2 * rng.standard_normal((rows, channels))).astype(dtype)
    dy = rng.standard_normal((rows, channels)).astype(dtype)
    x[:, 0] = 7.25
    x[:, 1] = -0.0
    x[:, 2] = 0.0
    x[0, 3] = np.nan
    x[-1, 4] = np.inf
    x[:, 5] = -np.inf
    if dtype == np.float64:
        x[:, 6] = 1e200
        x[:, 7] = -3e160 * (1 + np.arange(rows))
    moments = getattr(_cpu.moments_rc, build)
    sums = getattr(_cpu.gradient_sums_rc, build)
    one_item = (rows, 2 * channels)  # rows per item, columns per item: one strip
    split = (rows, 4)  # strips of 16 columns
    assert _cpu._rc_strips(channels, one_item[1])[0] == 1
    assert _cpu._rc_strips(channels, split[1])[0] == 3
    results = []
    for item_rows, columns_per_item in (one_item, split):
        statistics = np.full((2, channels), 5.0)  # overwritten, never read
        moments(x, item_rows, columns_per_item, *statistics)
        mean = np.where(np.isfinite(statistics[0]), statistics[0], 0.0)
        totals = np.full((3, channels), 5.0)
        sums(dy, x, mean, item_rows, columns_per_item, *totals)
        results.append((statistics.tobytes(), totals.tobytes()))
    assert results[0] == results[1]
    if dtype == np.float64:
        assert np.isnan(statistics[1, 6])  # the overflowing square, kept


def test_narrow_rows_in_runs_take_strided_channel_vectors():
    # the runs tile each constant separately: a strided (non-contiguous)
    # save_mean or weight next to contiguous constants must compile and
    # give the bits of contiguous copies
    from bnsgd_numba.batch_norm import _cpu

    rng = np.random.default_rng(9)
    x = rng.standard_normal((512, 16)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    assert _cpu._tile_rows(512, 16, 4) > 0
    out = bn.batch_norm_forward(x, training=True, channel_axis=-1)

    def strided(a):
        return np.repeat(a, 2)[::2]

    weight = rng.uniform(0.5, 2, 16).astype(np.float32)
    got = bn.batch_norm_backward(
        dy, x, strided(weight), strided(out.save_mean), strided(out.save_invstd), channel_axis=-1
    )
    want = bn.batch_norm_backward(dy, x, weight, out.save_mean, out.save_invstd, channel_axis=-1)
    assert got.dx.tobytes() == want.dx.tobytes()
    mean, var = rng.standard_normal(16).astype(np.float32), np.ones(16, np.float32)
    got_y = bn.batch_norm_forward(
        x, strided(weight), None, strided(mean), strided(var), training=False, channel_axis=-1
    ).y
    want_y = bn.batch_norm_forward(x, weight, None, mean, var, training=False, channel_axis=-1).y
    assert got_y.tobytes() == want_y.tobytes()


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_nonfinite_batch_never_reaches_the_running_statistics(poison):
    x = np.ones((8, 3, 4), np.float32)
    x[:, 0] = np.arange(8, dtype=np.float32)[:, None]
    x[:, 2] = np.arange(32, dtype=np.float32).reshape(8, 4)
    x[3, 1, 2] = poison
    layer = bn.BatchNorm(3)
    before = layer.state_dict()
    out = np.full_like(x, 42.0)
    with pytest.raises(FloatingPointError, match=r"1 channel\(s\) \[1\]"):
        layer.forward(x, out=out)
    for key, value in before.items():
        np.testing.assert_array_equal(layer.state_dict()[key], value)
    assert np.all(out == 42.0), "nothing is written when the layer raises"

    skipping = bn.BatchNorm(3, on_nonfinite="skip")
    with pytest.warns(RuntimeWarning, match="not finite"):
        y = skipping.forward(x)
    assert skipping.num_batches_tracked == 0 and skipping.skipped_updates == 1
    np.testing.assert_array_equal(skipping.running_mean, np.zeros(3, np.float32))
    np.testing.assert_array_equal(skipping.running_var, np.ones(3, np.float32))
    assert np.all(np.isfinite(y[:, [0, 2]])) and not np.all(np.isfinite(y[:, 1]))


def test_functional_api_raises_on_nonfinite_statistics_only_with_running_statistics():
    x = np.ones((4, 2), np.float64)
    x[0, 1] = np.nan
    rm, rv = np.zeros(2), np.ones(2)
    with pytest.raises(FloatingPointError, match=r"\[1\]"):
        bn.batch_norm_forward(x, None, None, rm, rv, training=True)
    np.testing.assert_array_equal(rm, np.zeros(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = bn.batch_norm_forward(x, training=True).y  # nothing to protect: NaN out
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, 0]).all()


def test_moving_average_is_the_seed_documents_and_pytorchs():
    # new = (1 - a) * old + a * batch, with a = momentum (the weight of the new batch)
    x = np.array([[1.0], [3.0]])
    rm, rv = np.array([10.0]), np.array([4.0])
    bn.batch_norm_forward(x, None, None, rm, rv, training=True, momentum=0.25)
    assert rm[0] == 0.75 * 10.0 + 0.25 * 2.0
    assert rv[0] == 0.75 * 4.0 + 0.25 * 2.0  # unbiased batch variance of [1, 3] is 2
