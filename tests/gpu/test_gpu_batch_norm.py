"""CUDA BatchNorm against the CPU kernels and the float64 reference."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import bnsgd_numba as bn
from bnsgd_numba._core import cuda as backend
from bnsgd_numba.batch_norm import NonFiniteStatisticsError
from bnsgd_numba.batch_norm import _cuda_driver as gpu_batch_norm
from tests import naive
from tests.gpu.conftest import to_device, to_host

DTYPES = [np.float32, np.float64]

# (shape, channel_axis, memory): "c" C-contiguous, "cl" channels-last memory
# for an NCHW-shaped array (PyTorch's channels_last).
LAYOUTS = {
    "ncs": ((4, 3, 5), 1, "c"),
    "rc": ((6, 4), -1, "c"),
    "channels_last": ((2, 3, 2, 3), 1, "cl"),
}


def device_input(x, memory):
    """``x`` on the device, in the requested memory layout, with x's shape."""
    if memory == "c":
        return to_device(x)
    moved = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    axes = (0, x.ndim - 1, *range(1, x.ndim - 1))
    return backend.permuted(to_device(moved), axes)


def assert_close(actual, expected, dtype, ulps=8):
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    tolerance = ulps * np.finfo(dtype).eps * scale
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64), expected, rtol=0, atol=tolerance
    )


def make_inputs(shape, axis, dtype, seed=0):
    rng = np.random.default_rng(seed)
    channels = shape[axis]
    x = rng.normal(1.5, 2.0, shape).astype(dtype)
    weight = rng.normal(1.0, 0.5, channels).astype(dtype)
    bias = rng.normal(0.0, 1.0, channels).astype(dtype)
    dy = rng.normal(0.0, 1.0, shape).astype(dtype)
    return x, weight, bias, dy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_training_forward_and_backward_match_cpu_and_reference(layout, dtype):
    shape, axis, memory = LAYOUTS[layout]
    x, weight, bias, dy = make_inputs(shape, axis, dtype)
    channels = shape[axis]
    rm_cpu, rv_cpu = np.zeros(channels, dtype), np.ones(channels, dtype)
    cpu = bn.batch_norm_forward(x, weight, bias, rm_cpu, rv_cpu, training=True, channel_axis=axis)
    d_x = device_input(x, memory)
    d_rm, d_rv = to_device(np.zeros(channels, dtype)), to_device(np.ones(channels, dtype))
    gpu = bn.batch_norm_forward(
        d_x, to_device(weight), to_device(bias), d_rm, d_rv, training=True, channel_axis=axis
    )
    assert backend.array_strides(gpu.y) == backend.array_strides(d_x)
    y = to_host(gpu.y)
    assert y.shape == shape and y.dtype == dtype
    assert_close(y, cpu.y, dtype)
    assert_close(to_host(gpu.save_mean), cpu.save_mean, dtype, ulps=2)
    assert_close(to_host(gpu.save_invstd), cpu.save_invstd, dtype, ulps=2)
    assert_close(to_host(d_rm), rm_cpu, dtype, ulps=2)
    assert_close(to_host(d_rv), rv_cpu, dtype, ulps=2)
    ref_y, ref_mean, ref_invstd = naive.batch_norm_forward(x, weight, bias, axis=axis)
    assert_close(y, ref_y, dtype, ulps=16)
    ref_rm, ref_rv = naive.running_statistics([x], axis=axis)
    assert_close(to_host(d_rm), ref_rm, dtype, ulps=4)
    assert_close(to_host(d_rv), ref_rv, dtype, ulps=4)

    d_dy = device_input(dy, memory)
    grads = bn.batch_norm_backward(
        d_dy, d_x, to_device(weight), gpu.save_mean, gpu.save_invstd, channel_axis=axis
    )
    cpu_grads = bn.batch_norm_backward(
        dy, x, weight, cpu.save_mean, cpu.save_invstd, channel_axis=axis
    )
    assert_close(to_host(grads.dx), cpu_grads.dx, dtype, ulps=16)
    assert_close(to_host(grads.dweight), cpu_grads.dweight, dtype, ulps=16)
    assert_close(to_host(grads.dbias), cpu_grads.dbias, dtype, ulps=16)
    ref_dx, ref_dw, ref_db = naive.batch_norm_backward(
        dy, x, weight, ref_mean, ref_invstd, axis=axis
    )
    assert_close(to_host(grads.dx), ref_dx, dtype, ulps=64)
    assert_close(to_host(grads.dweight), ref_dw, dtype, ulps=64)
    assert_close(to_host(grads.dbias), ref_db, dtype, ulps=64)


@pytest.mark.parametrize("layout", ["ncs", "channels_last"])
def test_eval_forward_and_backward_match_cpu(layout):
    shape, axis, memory = LAYOUTS[layout]
    dtype = np.float32
    x, weight, bias, dy = make_inputs(shape, axis, dtype, seed=1)
    channels = shape[axis]
    rm = np.linspace(-1, 1, channels).astype(dtype)
    rv = np.linspace(0.5, 2, channels).astype(dtype)
    cpu = bn.batch_norm_forward(x, None, bias, rm, rv, training=False, channel_axis=axis)
    d_x = device_input(x, memory)
    gpu = bn.batch_norm_forward(
        d_x, None, to_device(bias), to_device(rm), to_device(rv), training=False, channel_axis=axis
    )
    assert_close(to_host(gpu.y), cpu.y, dtype)
    np.testing.assert_array_equal(to_host(gpu.save_mean), cpu.save_mean)
    grads = bn.batch_norm_backward(
        device_input(dy, memory), d_x, None, gpu.save_mean, gpu.save_invstd,
        training=False, channel_axis=axis,
    )  # fmt: skip
    cpu_grads = bn.batch_norm_backward(
        dy, x, None, cpu.save_mean, cpu.save_invstd, training=False, channel_axis=axis
    )
    assert_close(to_host(grads.dx), cpu_grads.dx, dtype)
    assert_close(to_host(grads.dweight), cpu_grads.dweight, dtype, ulps=16)


@pytest.mark.parametrize("layout", ["ncs", "ncs-planes", "rc", "rc-columns"])
def test_several_blocks_per_channel_and_several_warps(layout, monkeypatch):
    # Two-warp blocks and tiny spans: the cross-warp merge and the merge of
    # several partials per channel both run; one elementwise block strides
    # (over the flat array, or over the (n, c) planes).
    from bnsgd_numba import config

    monkeypatch.setattr(config, "GPU_THREADS_PER_BLOCK", 64)
    monkeypatch.setattr(gpu_batch_norm, "ITEMS_PER_THREAD", 1)
    monkeypatch.setattr(gpu_batch_norm, "RC_ROWS_PER_THREAD", 1)
    monkeypatch.setattr(gpu_batch_norm, "MAX_ELEMENTWISE_BLOCKS", 1)
    monkeypatch.setattr(gpu_batch_norm, "MAX_PLANE_BLOCKS", 1)
    planes, columns = layout == "ncs-planes", layout == "rc-columns"
    monkeypatch.setattr(gpu_batch_norm, "MIN_PLANE_INNER", 1 if planes else 10**9)
    monkeypatch.setattr(gpu_batch_norm, "COLUMN_GRIDS", columns)
    layout = layout.split("-")[0]
    shape, axis = ((3, 2, 50), 1) if layout == "ncs" else ((40, 3), 1)
    launch = gpu_batch_norm._Launch(layout, shape)
    assert launch.spans >= 2
    assert (launch.planes, launch.columns) == (planes, columns)
    # elementwise threads walk across channels, or keep one (columns)
    assert planes or (launch.step_c > 0) != columns
    dtype = np.float64
    x, weight, bias, dy = make_inputs(shape, axis, dtype, seed=2)
    cpu = bn.batch_norm_forward(x, weight, bias, training=True, channel_axis=axis)
    d_x = to_device(x)
    gpu = bn.batch_norm_forward(d_x, to_device(weight), to_device(bias), training=True)
    assert_close(to_host(gpu.y), cpu.y, dtype)
    assert_close(to_host(gpu.save_invstd), cpu.save_invstd, dtype, ulps=2)
    grads = bn.batch_norm_backward(
        to_device(dy), d_x, to_device(weight), gpu.save_mean, gpu.save_invstd
    )
    cpu_grads = bn.batch_norm_backward(dy, x, weight, cpu.save_mean, cpu.save_invstd)
    assert_close(to_host(grads.dx), cpu_grads.dx, dtype, ulps=16)
    assert_close(to_host(grads.dweight), cpu_grads.dweight, dtype, ulps=16)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["ncs", "rc"])
def test_long_channels_match_cpu(layout, dtype):
    # Hundreds of values per channel and thread block: each thread reads its
    # values four at a time (the reductions' main loop, not only their tail),
    # and the elementwise kernels keep one channel per plane or column.
    shape, axis = ((8, 3, 40), 1) if layout == "ncs" else ((330, 3), -1)
    x, weight, bias, dy = make_inputs(shape, axis, dtype, seed=5)
    x += np.asarray(100.0, dtype)  # |mean| >> std: the merges must keep their accuracy
    cpu = bn.batch_norm_forward(x, weight, bias, training=True, channel_axis=axis)
    d_x = to_device(x)
    gpu = bn.batch_norm_forward(
        d_x, to_device(weight), to_device(bias), training=True, channel_axis=axis
    )
    assert_close(to_host(gpu.y), cpu.y, dtype)
    assert_close(to_host(gpu.save_mean), cpu.save_mean, dtype, ulps=2)
    assert_close(to_host(gpu.save_invstd), cpu.save_invstd, dtype, ulps=2)
    grads = bn.batch_norm_backward(
        to_device(dy), d_x, to_device(weight), gpu.save_mean, gpu.save_invstd, channel_axis=axis
    )
    cpu_grads = bn.batch_norm_backward(
        dy, x, weight, cpu.save_mean, cpu.save_invstd, channel_axis=axis
    )
    assert_close(to_host(grads.dx), cpu_grads.dx, dtype, ulps=16)
    assert_close(to_host(grads.dweight), cpu_grads.dweight, dtype, ulps=16)


def test_constant_channel_gives_exactly_bias():
    x = np.full((4, 3, 5), 7.25, dtype=np.float32)
    x[:, 1] = -3.0e4
    x[:, 2] = np.arange(20, dtype=np.float32).reshape(4, 5)
    bias = np.array([0.5, -1.25, 2.0], dtype=np.float32)
    weight = np.array([3.0, 2.0, 1.0], dtype=np.float32)
    gpu = bn.batch_norm_forward(to_device(x), to_device(weight), to_device(bias), training=True)
    y = to_host(gpu.y)
    assert not np.isnan(y).any()
    np.testing.assert_array_equal(y[:, 0], np.full((4, 5), 0.5, np.float32))
    np.testing.assert_array_equal(y[:, 1], np.full((4, 5), -1.25, np.float32))
    assert np.ptp(y[:, 2]) > 1


def test_large_mean_small_std_float32_is_accurate():
    rng = np.random.default_rng(3)
    x = (1.0e4 + 1.0e-2 * rng.standard_normal((4, 2, 8))).astype(np.float32)
    gpu = bn.batch_norm_forward(to_device(x), training=True)
    ref_y, ref_mean, ref_invstd = naive.batch_norm_forward(x)
    y = to_host(gpu.y)
    assert np.abs(y - ref_y).max() < 1e-3
    dy = rng.standard_normal(x.shape).astype(np.float32)
    grads = bn.batch_norm_backward(
        to_device(dy), to_device(x), None, gpu.save_mean, gpu.save_invstd
    )
    ref_dx, _, _ = naive.batch_norm_backward(dy, x, None, ref_mean, ref_invstd)
    scale = np.abs(ref_dx).max()
    assert np.abs(to_host(grads.dx) - ref_dx).max() < 1e-3 * scale


def test_out_is_written_and_returned():
    x, weight, bias, _ = make_inputs((4, 3, 5), 1, np.float32)
    out = to_device(np.zeros_like(x))
    gpu = bn.batch_norm_forward(
        to_device(x), to_device(weight), to_device(bias), training=True, out=out
    )
    assert gpu.y is out
    cpu = bn.batch_norm_forward(x, weight, bias, training=True)
    assert_close(to_host(out), cpu.y, np.float32)


def _state(*arrays):
    return [to_host(a).copy() for a in arrays]


@pytest.mark.parametrize(
    "change, error",
    [
        ({"x": np.ones((1, 3), np.float32)}, ValueError),  # one value per channel
        ({"running_mean": np.zeros(4, np.float32)}, ValueError),
        ({"weight": np.ones(3, np.float64)}, TypeError),
        ({"x": np.ones((4, 3, 5), np.int32)}, TypeError),
        ({"momentum": 1.5}, ValueError),
        ({"eps": 0.0}, ValueError),
        ({"on_nonfinite": "ignore"}, ValueError),
        ({"channel_axis": 3}, ValueError),
    ],
)
def test_bad_input_is_rejected_before_anything_is_written(change, error):
    x = np.ones((4, 3, 5), np.float32)
    args = {
        "x": x, "weight": np.ones(3, np.float32), "bias": np.zeros(3, np.float32),
        "running_mean": np.zeros(3, np.float32), "running_var": np.ones(3, np.float32),
    }  # fmt: skip
    scalars = {"momentum": 0.1, "eps": 1e-5, "on_nonfinite": "raise", "channel_axis": 1}
    for key, value in change.items():
        (args if key in args else scalars)[key] = value
    device = {key: to_device(value) for key, value in args.items()}
    out = to_device(np.full(args["x"].shape, 9, args["x"].dtype))
    before = _state(device["running_mean"], device["running_var"], out)
    with pytest.raises(error):
        bn.batch_norm_forward(
            device["x"], device["weight"], device["bias"], device["running_mean"],
            device["running_var"], training=True, out=out, **scalars,
        )  # fmt: skip
    after = _state(device["running_mean"], device["running_var"], out)
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_nonfinite_batch_never_reaches_the_running_statistics(policy):
    x = np.ones((4, 3, 5), np.float32)
    x[:, 0] = np.arange(20).reshape(4, 5)
    x[2, 1, 3] = np.nan
    d_rm, d_rv = to_device(np.zeros(3, np.float32)), to_device(np.ones(3, np.float32))
    out = to_device(np.full(x.shape, 9, np.float32))
    if policy == "raise":
        with pytest.raises(NonFiniteStatisticsError) as info:
            bn.batch_norm_forward(to_device(x), None, None, d_rm, d_rv, training=True, out=out)
        assert info.value.channels.tolist() == [1]
        np.testing.assert_array_equal(to_host(out), np.full(x.shape, 9, np.float32))
    else:
        with pytest.warns(RuntimeWarning, match="not finite") as record:
            result = bn.batch_norm_forward(
                to_device(x), None, None, d_rm, d_rv, training=True, out=out,
                on_nonfinite="skip",
            )  # fmt: skip
        assert record[0].filename == __file__  # the warning points at the caller
        y = to_host(result.y)
        assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, 0]).all()
    np.testing.assert_array_equal(to_host(d_rm), np.zeros(3, np.float32))
    np.testing.assert_array_equal(to_host(d_rv), np.ones(3, np.float32))


def test_layer_and_input_on_different_sides_is_a_clear_error():
    x = np.ones((4, 3, 5), np.float32)
    with pytest.raises(TypeError, match="to_device"):
        bn.BatchNorm(3)(to_device(x))
    with pytest.raises(TypeError, match="to_host"):
        bn.BatchNorm(3).to_device()(x)


def test_out_overlapping_an_argument_is_rejected():
    buffer = to_device(np.zeros(2 * 60, np.float32))
    x, out = buffer[:60].reshape(4, 3, 5), buffer[60:].reshape(4, 3, 5)
    result = bn.batch_norm_forward(x, training=True, out=out)  # adjacent views are fine
    assert result.y is out
    with pytest.raises(ValueError, match="overlaps the input"):
        bn.batch_norm_forward(x, training=True, out=x)


def test_host_and_device_arrays_mixed_is_a_clear_error():
    x = np.ones((4, 3, 5), np.float32)
    with pytest.raises(TypeError, match="cannot be mixed"):
        bn.batch_norm_forward(to_device(x), np.ones(3, np.float32), training=True)
    with pytest.raises(TypeError, match="cannot be mixed"):
        bn.batch_norm_forward(x, to_device(np.ones(3, np.float32)), training=True)
    save = to_device(np.ones(3, np.float32))
    with pytest.raises(TypeError, match="cannot be mixed"):
        bn.batch_norm_backward(x, to_device(x), None, save, save)


def test_unsupported_strides_are_rejected():
    x = to_device(np.ones((4, 3, 6), np.float32))
    strided = x[:, :, ::2]
    with pytest.raises(ValueError, match="C-contiguous or dense channels-last"):
        bn.batch_norm_forward(strided, training=True)


def test_without_cuda_a_device_array_raises_one_clear_error(monkeypatch):
    monkeypatch.setattr(backend, "cuda_available", lambda: False)
    with pytest.raises(backend.CudaUnavailableError, match="cannot run here"):
        bn.batch_norm_forward(to_device(np.ones((4, 3), np.float32)), training=True)


def test_importing_the_backend_never_fails_without_a_gpu():
    code = (
        "import bnsgd_numba as bn, bnsgd_numba.batch_norm._cuda_driver,"
        " bnsgd_numba.sgd._cuda_driver;"
        "print(bn.cuda_available())"
    )
    root = Path(__file__).resolve().parents[2]
    env = {"NUMBA_ENABLE_CUDASIM": "0", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("True", "False")


def test_bitwise_reproducible_from_run_to_run():
    shape = (4, 3, 5) if backend.SIMULATOR else (32, 16, 37, 37)
    x, weight, bias, dy = make_inputs(shape, 1, np.float32, seed=4)
    d_x, d_w, d_b, d_dy = to_device(x), to_device(weight), to_device(bias), to_device(dy)
    runs = []
    for _ in range(2 if backend.SIMULATOR else 5):
        out = bn.batch_norm_forward(d_x, d_w, d_b, training=True)
        grads = bn.batch_norm_backward(d_dy, d_x, d_w, out.save_mean, out.save_invstd)
        runs.append(b"".join(to_host(a).tobytes() for a in (*out, *grads)))
    assert all(run == runs[0] for run in runs)


def test_reductions_use_no_atomics():
    from bnsgd_numba.batch_norm import _cuda as batch_norm_kernels
    from bnsgd_numba.sgd import _cuda as sgd_kernels

    for module in (batch_norm_kernels, sgd_kernels):
        assert "cuda.atomic" not in inspect.getsource(module)


def test_batch_norm_layer_on_the_device_matches_the_host_layer():
    x, _, _, dy = make_inputs((4, 3, 5), 1, np.float32, seed=5)
    host = bn.BatchNorm(3)
    device = bn.BatchNorm(3).to_device()
    for _ in range(2):
        y_host = host(x)
        y_device = device(to_device(x))
        assert_close(to_host(y_device), y_host, np.float32)
        dx_host = host.backward(dy)
        dx_device = device.backward(to_device(dy))
        assert_close(to_host(dx_device), dx_host, np.float32, ulps=16)
        assert_close(to_host(device.grad_weight), host.grad_weight, np.float32, ulps=16)
    state = device.state_dict()
    assert all(isinstance(value, np.ndarray) for value in state.values())
    assert_close(state["running_var"], host.running_var, np.float32, ulps=2)
    assert device.num_batches_tracked == 2
    y_eval = device(to_device(x), training=False)
    assert_close(to_host(y_eval), host(x, training=False), np.float32)
    back = device.to_host()
    assert isinstance(back.weight, np.ndarray)
    assert_close(back.running_mean, host.running_mean, np.float32, ulps=2)


@pytest.mark.skipif(backend.SIMULATOR, reason="PyTorch CUDA tensors need a real GPU")
def test_torch_cuda_tensors_are_read_in_place():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch was built without CUDA")
    x = torch.randn(8, 4, 6, 6, device="cuda").to(memory_format=torch.channels_last)
    rm, rv = torch.zeros(4, device="cuda"), torch.ones(4, device="cuda")
    out = bn.batch_norm_forward(x, None, None, rm, rv, training=True)
    expected = torch.nn.functional.batch_norm(
        x, torch.zeros(4, device="cuda"), torch.ones(4, device="cuda"), training=True
    )
    assert np.abs(to_host(out.y) - expected.cpu().numpy()).max() < 1e-5
    assert float(rm.abs().sum()) > 0  # updated in place, through the interface


@pytest.mark.skipif(not backend.SIMULATOR, reason="benchmarks/gpu_check.sh runs it for real")
def test_gpu_benchmark_script_runs_in_smoke_mode(tmp_path, monkeypatch):
    from bnsgd_numba import config
    from bnsgd_numba.bench import gpu

    monkeypatch.setattr(config, "GPU_THREADS_PER_BLOCK", config.GPU_THREADS_PER_BLOCK)
    report = tmp_path / "RESULTS-gpu.md"
    assert gpu.main(["--smoke", "--output", str(report), "--note", "a note"]) == 0
    text = report.read_text()
    assert "| (2,3,2,3) channels-last | backward |" in text
    assert "sgd-step (arena)" in text and "copy probe" in text and "a note" in text
    assert "| rms_norm (3,8) | backward |" in text and "group_norm" in text
    # Simulator: no PyTorch columns, so no speed-up target can be judged.
    assert "| (2,3,2,3) NCHW, backward: at least as fast as PyTorch | n/a | not measured |" in text
    assert "## Targets" in text and "issue" not in text


@settings(max_examples=6, deadline=None)
@given(
    shape=st.tuples(st.integers(2, 5), st.integers(1, 4), st.integers(1, 4)),  # fmt: skip
    channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
@example(shape=(2, 1, 1), channels_last=False, seed=0)  # two values per channel
@example(shape=(5, 4, 1), channels_last=True, seed=1)
def test_random_shapes_match_cpu(shape, channels_last, seed):
    axis = -1 if channels_last else 1
    if channels_last:
        shape = (shape[0] * shape[2], shape[1])
    x, weight, bias, dy = make_inputs(shape, axis, np.float64, seed=seed)
    cpu = bn.batch_norm_forward(x, weight, bias, training=True, channel_axis=axis)
    d_x = to_device(x)
    gpu = bn.batch_norm_forward(
        d_x, to_device(weight), to_device(bias), training=True, channel_axis=axis
    )
    assert_close(to_host(gpu.y), cpu.y, np.float64, ulps=64)
    grads = bn.batch_norm_backward(
        to_device(dy), d_x, to_device(weight), gpu.save_mean, gpu.save_invstd, channel_axis=axis
    )
    cpu_grads = bn.batch_norm_backward(
        dy, x, weight, cpu.save_mean, cpu.save_invstd, channel_axis=axis
    )
    assert_close(to_host(grads.dx), cpu_grads.dx, np.float64, ulps=256)
    assert_close(to_host(grads.dweight), cpu_grads.dweight, np.float64, ulps=256)


def test_batch_norm_layer_without_bias_on_the_device_matches_the_host_layer():
    x, weight, _, dy = make_inputs((4, 3, 5), 1, np.float64, seed=6)
    host = bn.BatchNorm(3, bias=False, dtype=np.float64)
    host.weight[:] = weight
    device = bn.BatchNorm(3, bias=False, dtype=np.float64)
    device.load_state_dict(host.state_dict())
    device.to_device()
    assert device.bias is None and device.grad_bias is None
    assert len(device.parameters()) == len(device.gradients()) == 1
    for training in (True, False):
        assert_close(to_host(device(to_device(x), training)), host(x, training), np.float64)
        dx_device = device.backward(to_device(dy))
        assert_close(to_host(dx_device), host.backward(dy), np.float64, ulps=16)
        assert_close(to_host(device.grad_weight), host.grad_weight, np.float64, ulps=16)
    assert device.state_dict().keys() == host.state_dict().keys()


@pytest.mark.parametrize(
    ("layer", "x", "error", "message"),
    [
        (lambda: bn.BatchNorm(3), np.ones((4, 4, 5), np.float32), ValueError,
         "x: expected 3 channels on axis 1"),
        (lambda: bn.BatchNorm(3, affine=False, track_running_stats=False),
         np.ones((4, 4, 5), np.float32), ValueError, "x: expected 3 channels on axis 1"),
        (lambda: bn.BatchNorm(3), np.ones((4, 3, 5)), TypeError,
         r"x: dtype float64 does not match the layer's float32; cast x"),
        (lambda: bn.BatchNorm(3, channel_axis=-2), np.ones((3, 5), np.float32), ValueError,
         "batch axis"),
    ],
    ids=["channels", "channels, no parameters", "dtype", "batch axis"],
)  # fmt: skip
def test_device_layer_names_x_and_changes_nothing(layer, x, error, message):
    layer = layer().to_device()
    before = layer.state_dict()
    with pytest.raises(error, match=message):
        layer(to_device(x))
    with pytest.raises(TypeError, match="training"):
        layer(to_device(np.ones((4, 3, 5), np.float32)), training="False")
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    assert layer.num_batches_tracked == 0


def test_device_layer_skip_warning_points_at_the_caller():
    layer = bn.BatchNorm(3, on_nonfinite="skip").to_device()
    x = np.ones((4, 3, 5), np.float32)
    x[2, 1, 3] = np.nan
    with pytest.warns(RuntimeWarning, match="not finite") as record:
        layer(to_device(x))
    assert record[0].filename == __file__
    assert layer.skipped_updates == 1


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_running_update_that_overflows_float32_raises_as_on_the_cpu(channels_last):
    # channel 1: +-1e20, a variance finite in float64 whose running update is not in float32
    x = np.ones((4, 3, 2), np.float32)
    x[:, 0] = np.arange(8).reshape(4, 2)
    x[:, 1] = np.where(np.arange(8).reshape(4, 2) % 2 == 0, 1e20, -1e20)
    axis = 1
    if channels_last:
        x, axis = np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1
    d_rm, d_rv = to_device(np.full(3, 0.5, np.float32)), to_device(np.full(3, 2.0, np.float32))
    out = to_device(np.full(x.shape, 9, np.float32))
    with pytest.raises(NonFiniteStatisticsError) as info:
        bn.batch_norm_forward(
            to_device(x), None, None, d_rm, d_rv, training=True, out=out, channel_axis=axis
        )
    assert info.value.channels.tolist() == [1]
    np.testing.assert_array_equal(to_host(out), 9.0)
    with pytest.warns(RuntimeWarning, match=r"\[1\]"):
        bn.batch_norm_forward(
            to_device(x), None, None, d_rm, d_rv, training=True, channel_axis=axis,
            on_nonfinite="skip",
        )  # fmt: skip
    np.testing.assert_array_equal(to_host(d_rm), 0.5)
    np.testing.assert_array_equal(to_host(d_rv), 2.0)
    x[x == 1e20], x[x == -1e20] = 1e15, -1e15  # the update fits: written as on the CPU
    rm, rv = np.full(3, 0.5, np.float32), np.full(3, 2.0, np.float32)
    bn.batch_norm_forward(to_device(x), None, None, d_rm, d_rv, training=True, channel_axis=axis)
    bn.batch_norm_forward(x, None, None, rm, rv, training=True, channel_axis=axis)
    assert_close(to_host(d_rv), rv, np.float32)
    assert np.isfinite(to_host(d_rv)).all()


def test_device_running_statistics_must_be_apart_from_the_other_arguments():
    x = to_device(np.ones((4, 3, 5), np.float32))
    state = to_device(np.zeros(6, np.float32))
    weight = to_device(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="running_mean and running_var overlap"):
        bn.batch_norm_forward(x, None, None, state[:3], state[2:5], training=True)
    with pytest.raises(ValueError, match="running_mean and weight overlap"):
        bn.batch_norm_forward(x, weight, None, weight, state[3:], training=True)
    np.testing.assert_array_equal(to_host(state), 0.0)
    bn.batch_norm_forward(x, weight, None, state[:3], state[3:], training=True)


def test_device_eps_below_the_smallest_normal_number_is_rejected():
    x = to_device(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="eps=1e-300 underflows float32"):
        bn.batch_norm_forward(x, training=True, eps=1e-300)


@pytest.mark.parametrize("shape", [(0, 3, 4), (4, 3, 0), (0, 3)])
def test_device_empty_batch_matches_the_cpu(shape):
    x = np.zeros(shape, np.float32)
    rm, rv = np.full(3, 0.25, np.float32), np.full(3, 1.5, np.float32)
    d_rm, d_rv = to_device(rm), to_device(rv)
    for training in (True, False):
        host = bn.batch_norm_forward(x, None, None, rm, rv, training=training)
        device = bn.batch_norm_forward(to_device(x), None, None, d_rm, d_rv, training=training)
        assert tuple(device.y.shape) == shape
        np.testing.assert_array_equal(to_host(d_rm), 0.25)
        np.testing.assert_array_equal(to_host(d_rv), 1.5)
        np.testing.assert_array_equal(to_host(device.save_mean), host.save_mean)
        np.testing.assert_array_equal(to_host(device.save_invstd), host.save_invstd)
        grads = bn.batch_norm_backward(
            to_device(x), to_device(x), None, device.save_mean, device.save_invstd,
            training=training,
        )  # fmt: skip
        assert tuple(grads.dx.shape) == shape
        np.testing.assert_array_equal(to_host(grads.dweight), 0.0)
        np.testing.assert_array_equal(to_host(grads.dbias), 0.0)


@pytest.mark.parametrize("value", [64.0, "256"])
def test_a_threads_per_block_that_is_not_an_int_is_named(monkeypatch, value):
    monkeypatch.setattr(bn.config, "GPU_THREADS_PER_BLOCK", value)
    d_rm = to_device(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="config.GPU_THREADS_PER_BLOCK must be an int"):
        bn.batch_norm_forward(
            to_device(np.ones((4, 3), np.float32)), None, None, d_rm,
            to_device(np.ones(3, np.float32)), training=True,
        )  # fmt: skip
    np.testing.assert_array_equal(to_host(d_rm), 0.0)
