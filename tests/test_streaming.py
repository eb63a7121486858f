"""Streaming stores (``_core.streaming``): the same bits as plain stores, at any alignment.

An output of ``STREAM_BYTES`` or more is written with streaming stores; a
quarter of it is not. Normalizing the whole and normalizing its quarters
with the same constants must give the same bits, whatever the output's
alignment.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnsgd_numba as bn
from bnsgd_numba._core import streaming
from bnsgd_numba.batch_norm import _cpu

LINE = streaming.LINE_BYTES


@pytest.mark.parametrize("itemsize", [4, 8])
@pytest.mark.parametrize("first", [0, 4, 8, 16, 60, 64, 100, 4096 + 24])
@pytest.mark.parametrize("count", [0, 1, 3, 15, 16, 17, 40, 1000])
def test_line_span_streams_whole_lines_and_nothing_else(itemsize, first, count):
    first -= first % itemsize
    head, body = streaming.line_span(first, count, itemsize)
    assert 0 <= head <= body <= count
    if head < count:
        assert (first + head * itemsize) % LINE == 0
    assert (body - head) * itemsize % LINE == 0
    # what is left after the body is less than a line
    assert (count - body) * itemsize < LINE or head == count
    assert head * itemsize < LINE


def test_line_span_stores_a_misaligned_span_plainly():
    assert streaming.line_span(2, 100, 4) == (100, 100)
    assert streaming.line_span(12, 100, 8) == (100, 100)


def _placed(shape, dtype, offset):
    # an uninitialized array `offset` elements past a 64-byte boundary
    size = int(np.prod(shape))
    buffer = np.empty(size + 2 * LINE, dtype)
    start = (-buffer.ctypes.data % LINE) // buffer.itemsize + offset
    return buffer[start : start + size].reshape(shape)


def _quarters_of(run, x, y):
    # run(x_part, y_part) on four quarters along the first axis, each below
    # the streaming threshold; their outputs against y's
    rows = x.shape[0]
    for start in range(0, rows, rows // 4):
        part = np.empty_like(x[start : start + rows // 4])
        assert not streaming.streams(part)
        run(x[start : start + rows // 4], part)
        assert np.array_equal(part.view(np.uint8), y[start : start + rows // 4].view(np.uint8))


CASES = {
    # (shape, dtype): at least STREAM_BYTES of output, rows of odd length
    "ncs float32": ((8, 48, 16385), np.float32),
    "ncs float64": ((4, 48, 16385), np.float64),
    "rc wide rows": ((8200, 768), np.float32),
    "rc narrow rows, tiled constants": ((98400, 64), np.float32),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("build", ["parallel", "serial"])
def test_streamed_normalization_gives_the_bits_of_plain_stores(case, offset, build):
    shape, dtype = CASES[case]
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    y = _placed(shape, dtype, offset)
    assert streaming.streams(y)
    channels = shape[1]
    shift, scale, offset_ = (rng.standard_normal(channels).astype(dtype) for _ in range(3))
    if len(shape) == 3:
        kernel = getattr(_cpu.normalize_ncs, build)

        def run(source, target):
            kernel(source, target, shift, scale, offset_)
    else:
        kernel = getattr(_cpu.normalize_rc, build)

        def run(source, target):
            kernel(source, target, 64, shift, scale, offset_)

    run(x, y)
    _quarters_of(run, x, y)


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_eval_forward_streams_the_bits_of_its_quarter_batches(channel_axis):
    # the public API: a batch large enough to stream, in eval mode (the
    # running statistics fix the constants), against its quarters
    rng = np.random.default_rng(3)
    shape = (16, 64, 96, 72) if channel_axis == 1 else (16, 96, 72, 64)
    x = rng.standard_normal(shape).astype(np.float32)
    channels = shape[channel_axis]
    weight, bias, running_mean = (rng.standard_normal(channels).astype(np.float32) for _ in "wbm")
    running_var = rng.uniform(0.5, 2.0, channels).astype(np.float32)

    def run(source, target):
        bn.batch_norm_forward(
            source, weight, bias, running_mean, running_var, training=False,
            channel_axis=channel_axis, out=target,
        )  # fmt: skip

    y = _placed(shape, np.float32, 1)
    assert streaming.streams(y)
    run(x, y)
    _quarters_of(run, x, y)


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_streams_the_bits_of_its_quarter_batches(affine):
    # each sample's statistics are its own, so a quarter of the batch is
    # normalized exactly as in the whole (which streams; a quarter does not)
    from bnsgd_numba.normalizations.group_norm import GroupNorm

    rng = np.random.default_rng(5)
    shape = (16, 64, 80, 81)
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    layer = GroupNorm(8, 64, affine=affine)
    if affine:
        layer.weight[:] = rng.uniform(0.5, 1.5, 64)
        layer.bias[:] = rng.standard_normal(64)

    def run(source, target):
        layer.forward(source, out=target)

    y = _placed(shape, np.float32, 2)
    assert streaming.streams(y)
    run(x, y)
    _quarters_of(run, x, y)


@pytest.mark.parametrize("case", [case for case in CASES if case.startswith("ncs")])
@pytest.mark.parametrize("offset", [0, 3])
@pytest.mark.parametrize("build", ["parallel", "serial"])
def test_streamed_input_gradient_gives_the_bits_of_plain_stores(case, offset, build):
    # the backward's NCS dx pass with given per-channel constants: the whole
    # (streamed) against its quarters (plain stores); the RC pass does not
    # stream (see _input_gradient_rc)
    shape, dtype = CASES[case]
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    dx = _placed(shape, dtype, offset)
    assert streaming.streams(dx)
    channels = shape[1]
    hi, lo, dy_scale, shift, xmu_scale = (
        rng.standard_normal(channels).astype(dtype) for _ in range(5)
    )  # fmt: skip
    lo *= dtype(1e-7)  # the float64 mean's remainder after rounding to dtype
    rows_of_x = {x[start:].ctypes.data: start for start in range(0, shape[0], shape[0] // 4)}
    kernel = getattr(_cpu.input_gradient_ncs, build)

    def run(source, target):
        start = rows_of_x[source.ctypes.data]
        gradient = dy[start : start + source.shape[0]]
        kernel(gradient, source, target, hi, lo, dy_scale, shift, xmu_scale)

    run(x, dx)
    _quarters_of(run, x, dx)
