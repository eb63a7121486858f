"""GPU benchmark: our CUDA kernels against PyTorch on the same GPU and a copy probe.

Measured side by side in one process on one GPU: BatchNorm forward-train
(with running statistics, as a layer in training) and backward in float32,
NCHW and channels-last, against ``torch.nn.functional.batch_norm`` and
``torch.ops.aten.native_batch_norm_backward`` (cuDNN when PyTorch uses it);
the SGD step over a :class:`~bnsgd_numba.sgd._cuda_driver.DeviceParameterArena`
against ``torch.optim.SGD(fused=True)`` over the same tensors; and a
device-to-device copy probe. Each time is the best of several rounds of
back-to-back calls closed by a device synchronization, so launch and Python
overheads count on both sides. GB/s counts the traffic an operation cannot
avoid; "% of probe" compares it with the copy's bandwidth.

Run ``python -m bnsgd_numba.bench.gpu --output benchmarks/RESULTS-gpu.md`` on a
machine with a GPU (``benchmarks/gpu_check.sh`` runs the GPU tests first).
``--smoke`` runs tiny cases, also in the CUDA simulator, to check the script.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import math
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# Bytes moved per element of x, in multiples of the array's size:
# forward-train reads x twice and writes y; backward reads dy and x twice and
# writes dx. An SGD step with momentum reads param, grad and buffer and writes
# param and buffer.
TRAFFIC = {"forward-train": 3, "backward": 5, "sgd-step": 5}
# The normalization variants keep their statistics per row or group, which one
# block reads once: forward reads x and writes y; backward reads dy and x and
# writes dx (as in :mod:`bnsgd_numba.bench.normalizations`).
VARIANT_TRAFFIC = {"forward": 2, "backward": 3}
BN_CASES = (
    ("(256,64,56,56) NCHW", (256, 64, 56, 56), False),
    ("(256,64,56,56) channels-last", (256, 64, 56, 56), True),
)
SMOKE_BN_CASES = (
    ("(2,3,2,3) NCHW", (2, 3, 2, 3), False),
    ("(2,3,2,3) channels-last", (2, 3, 2, 3), True),
)
# ResNet-50's parameter tensors, roughly: many small ones and a few large.
SGD_SHAPES = (
    [(64, 3, 7, 7)]
    + [(256, 64, 1, 1), (64, 64, 3, 3), (64,), (256,)] * 12
    + [
        (512, 256, 1, 1),
        (512, 128, 3, 3),
        (1024, 512, 1, 1),
        (1024, 256, 3, 3),
        (2048, 1024, 1, 1),
        (2048, 512, 3, 3),
        (512, 2048, 1, 1),
        (1000, 2048),
        (1000,),
    ]
    * 2
)
SMOKE_SGD_SHAPES = [(3, 4), (5,), (2, 2, 2)]
#: (name, variant, shape, constructor arguments): issue 6's cases.
VARIANT_CASES = (
    ("layer_norm (4096,1024)", "layer_norm", (4096, 1024), ((1024,), {})),
    ("group_norm (32,64,56,56), 8 groups", "group_norm", (32, 64, 56, 56), ((8, 64), {})),
    ("rms_norm (4096,1024)", "rms_norm", (4096, 1024), ((1024,), {})),
)
SMOKE_VARIANT_CASES = (
    ("layer_norm (3,8)", "layer_norm", (3, 8), ((8,), {})),
    ("group_norm (2,4,3), 2 groups", "group_norm", (2, 4, 3), ((2, 4), {})),
    ("rms_norm (3,8)", "rms_norm", (3, 8), ((8,), {})),
)


@dataclass
class Row:
    """One measurement."""

    case: str
    operation: str
    ours_ms: float
    torch_ms: float | None
    gb_per_s: float
    percent_of_probe: float

    @property
    def speedup(self) -> float | None:
        return None if self.torch_ms is None else self.torch_ms / self.ours_ms


def best_seconds(
    function: Callable[[], Any], synchronize: Callable[[], None], *, repeat: int, calls: int
) -> float:
    """Best over ``repeat`` rounds of the mean time of ``calls`` back-to-back calls."""
    function()
    synchronize()
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        synchronize()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


#: When a list, every timed call is also run under ``torch.profiler`` and its
#: per-kernel table appended here (``--profile``).
PROFILE_LOG: list[str] | None = None


def _timed(
    label: str,
    function: Callable[[], Any],
    synchronize: Callable[[], None],
    torch: Any,
    *,
    repeat: int,
    calls: int,
) -> float:
    """:func:`best_seconds`, and a kernel profile of ``calls`` calls when profiling."""
    seconds = best_seconds(function, synchronize, repeat=repeat, calls=calls)
    if PROFILE_LOG is not None and torch is not None:
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(calls):
                function()
            synchronize()
        try:
            table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=14)
        except Exception:  # older profilers name the column differently
            table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14)
        PROFILE_LOG.append(
            f"## {label}: {seconds * 1e3:.3f} ms per call (best of {repeat} x {calls}); "
            f"profile of {calls} calls\n\n```\n{table}\n```\n"
        )
    return seconds


def _torch_cuda() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _sync_all(torch: Any) -> Callable[[], None]:
    from bnsgd_numba._core import cuda as backend

    def synchronize() -> None:
        backend.synchronize()
        if torch is not None:
            torch.cuda.synchronize()

    return synchronize


def copy_probe(nbytes: int, synchronize: Callable[[], None], repeat: int, calls: int) -> float:
    """Device-to-device copy bandwidth in bytes/s (one read and one write per byte)."""
    from bnsgd_numba._core import cuda as backend

    count = nbytes // 4
    source = backend.device_empty(count, np.float32)
    target = backend.device_empty(count, np.float32)
    seconds = best_seconds(
        lambda: target.copy_to_device(source), synchronize, repeat=repeat, calls=calls
    )
    return 2 * count * 4 / seconds


def _measure(
    name, ours, theirs, traffic, nbytes, torch, synchronize, probe, repeat, calls
) -> list[Row]:
    """Time each of ``ours`` and its PyTorch counterpart; one row each.

    An operation "base, detail" (an allocating variant) is compared with
    PyTorch's "base", timed again without a profile; ``traffic[base]`` times
    ``nbytes`` is the traffic it cannot avoid.
    """
    rows = []
    for operation, function in ours.items():
        seconds = _timed(
            f"ours {name} {operation}", function, synchronize, torch, repeat=repeat, calls=calls
        )
        torch_s = None
        base = operation.split(",")[0]
        if base in theirs and base == operation:
            torch_s = _timed(
                f"torch {name} {base}", theirs[base], synchronize, torch,
                repeat=repeat, calls=calls,
            )  # fmt: skip
        elif base in theirs:
            torch_s = best_seconds(theirs[base], synchronize, repeat=repeat, calls=calls)
        rate = traffic[base] * nbytes / seconds
        rows.append(
            Row(
                name,
                operation,
                seconds * 1e3,
                None if torch_s is None else torch_s * 1e3,
                rate / 1e9,
                100 * rate / probe,
            )  # fmt: skip
        )
    return rows


def _bn_case(name, shape, channels_last, torch, synchronize, probe, repeat, calls) -> list[Row]:
    import bnsgd_numba as bn
    from bnsgd_numba._core import cuda as backend

    rng = np.random.default_rng(0)
    channels = shape[1]
    if channels_last:
        moved = (shape[0], *shape[2:], shape[1])
        axes = (0, len(shape) - 1, *range(1, len(shape) - 1))
        x_host = np.moveaxis(rng.standard_normal(moved, dtype=np.float32), -1, 1)
        dy_host = np.moveaxis(rng.standard_normal(moved, dtype=np.float32), -1, 1)
        x = backend.permuted(backend.to_device(np.moveaxis(x_host, 1, -1)), axes)
        dy = backend.permuted(backend.to_device(np.moveaxis(dy_host, 1, -1)), axes)
    else:
        x_host = rng.standard_normal(shape, dtype=np.float32)
        dy_host = rng.standard_normal(shape, dtype=np.float32)
        x, dy = backend.to_device(x_host), backend.to_device(dy_host)
    weight = backend.to_device(np.ones(channels, np.float32))
    bias = backend.to_device(np.zeros(channels, np.float32))
    running_mean = backend.to_device(np.zeros(channels, np.float32))
    running_var = backend.to_device(np.ones(channels, np.float32))
    saved = bn.batch_norm_forward(x, weight, bias, training=True)
    y_out = bn.batch_norm_forward(x, weight, bias, training=True).y
    dx_out = bn.batch_norm_backward(dy, x, weight, saved.save_mean, saved.save_invstd).dx
    ours = {
        "forward-train": lambda: bn.batch_norm_forward(
            x, weight, bias, running_mean, running_var, training=True, out=y_out
        ),
        "backward": lambda: bn.batch_norm_backward(
            dy, x, weight, saved.save_mean, saved.save_invstd, out=dx_out
        ),
        "forward-train, new y": lambda: bn.batch_norm_forward(
            x, weight, bias, running_mean, running_var, training=True
        ),
        "backward, new dx": lambda: bn.batch_norm_backward(
            dy, x, weight, saved.save_mean, saved.save_invstd
        ),
    }
    theirs: dict[str, Callable[[], Any]] = {}
    if torch is not None:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        xt = torch.from_numpy(np.ascontiguousarray(x_host)).cuda().to(memory_format=fmt)
        dyt = torch.from_numpy(np.ascontiguousarray(dy_host)).cuda().to(memory_format=fmt)
        wt = torch.ones(channels, device="cuda")
        bt = torch.zeros(channels, device="cuda")
        rmt = torch.zeros(channels, device="cuda")
        rvt = torch.ones(channels, device="cuda")
        _, save_mean, save_invstd = torch.ops.aten.native_batch_norm(
            xt, wt, bt, rmt, rvt, True, 0.1, 1e-5
        )
        theirs = {
            "forward-train": lambda: torch.nn.functional.batch_norm(xt, rmt, rvt, wt, bt, True),
            "backward": lambda: torch.ops.aten.native_batch_norm_backward(
                dyt, xt, wt, rmt, rvt, save_mean, save_invstd, True, 1e-5, [True, True, True]
            ),
        }
    nbytes = math.prod(shape) * 4
    return _measure(name, ours, theirs, TRAFFIC, nbytes, torch, synchronize, probe, repeat, calls)


def _sgd_case(shapes, torch, synchronize, probe, repeat, calls) -> Row:
    import bnsgd_numba as bn
    from bnsgd_numba.sgd.arena import DeviceParameterArena

    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]
    arena = DeviceParameterArena.from_arrays(arrays)
    arena.flat_grads.copy_to_device(rng.standard_normal(arena.size, dtype=np.float32))
    optimizer = bn.SGD(arena, lr=1e-3, momentum=0.9, weight_decay=1e-4)
    seconds = best_seconds(optimizer.step, synchronize, repeat=repeat, calls=calls)
    torch_s = None
    if torch is not None:
        params = [torch.from_numpy(a).cuda().requires_grad_() for a in arrays]
        for p in params:
            p.grad = torch.randn_like(p)
        fused = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4, fused=True)
        torch_s = best_seconds(fused.step, synchronize, repeat=repeat, calls=calls)
    rate = TRAFFIC["sgd-step"] * arena.size * 4 / seconds
    name = f"{len(shapes)} tensors, {arena.size / 1e6:.1f}M float32, momentum"
    return Row(
        name, "sgd-step (arena)", seconds * 1e3, None if torch_s is None else torch_s * 1e3,
        rate / 1e9, 100 * rate / probe,
    )  # fmt: skip


def _torch_variant(variant: str, layer: Any, x_host: np.ndarray, dy_host: np.ndarray, torch: Any):
    """PyTorch's forward and backward of one variant on CUDA tensors: {operation: call}."""
    from bnsgd_numba.bench.normalizations import torch_calls

    bias = getattr(layer, "bias", None)
    return torch_calls(
        torch, variant, layer, torch.from_numpy(x_host).cuda(), torch.from_numpy(dy_host).cuda(),
        torch.from_numpy(layer.weight.copy_to_host()).cuda(),
        None if bias is None else torch.from_numpy(bias.copy_to_host()).cuda(),
    )  # fmt: skip


def _variant_case(name, variant, shape, arguments, torch, synchronize, probe, repeat, calls):
    from bnsgd_numba._core import cuda as backend
    from bnsgd_numba.registry import create_normalization

    args, kwargs = arguments
    rng = np.random.default_rng(2)
    x_host = rng.standard_normal(shape, dtype=np.float32)
    dy_host = rng.standard_normal(shape, dtype=np.float32)
    layer = create_normalization(variant, *args, dtype=np.float32, **kwargs)
    layer.weight[...] = rng.uniform(0.5, 1.5, layer.weight.shape)
    if getattr(layer, "bias", None) is not None:
        layer.bias[...] = rng.uniform(-0.5, 0.5, layer.bias.shape)
    layer.to_device()
    x, dy = backend.to_device(x_host), backend.to_device(dy_host)
    y_out, dx_out = backend.device_empty(shape, np.float32), backend.device_empty(shape, np.float32)
    layer.forward(x, out=y_out)
    layer.backward(dy, out=dx_out)  # compiled; backward's saved input is x
    ours = {
        "forward": lambda: layer.forward(x, out=y_out),
        "backward": lambda: layer.backward(dy, out=dx_out),
    }
    theirs = {} if torch is None else _torch_variant(variant, layer, x_host, dy_host, torch)
    nbytes = math.prod(shape) * 4
    return _measure(
        name, ours, theirs, VARIANT_TRAFFIC, nbytes, torch, synchronize, probe, repeat, calls
    )


def _versions(torch: Any) -> list[str]:
    from bnsgd_numba._core import cuda as backend

    lines = [f"- device: {backend.device_name()}"]
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        if smi.returncode == 0:
            lines.append(f"- nvidia-smi: {smi.stdout.strip()}")
    except (OSError, subprocess.SubprocessError):
        pass
    if not backend.SIMULATOR:
        try:
            lines.append(f"- CUDA driver API version: {backend.driver_version()}")
        except Exception as exc:  # a report line, never a failure
            lines.append(f"- CUDA driver API version: unknown ({exc})")
    for package in ("numba", "numba-cuda", "numpy", "torch"):
        try:
            lines.append(f"- {package}: {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"- {package}: not installed")
    if torch is not None:
        lines.append(f"- torch CUDA: {torch.version.cuda}, cuDNN: {torch.backends.cudnn.version()}")
    lines.append(f"- Python {platform.python_version()} on {platform.platform()}")
    return lines


def format_report(rows: list[Row], probe: float, versions: list[str], notes: list[str]) -> str:
    """Markdown report: versions, the copy probe, one table row per measurement."""

    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    lines = [
        "# GPU benchmark",
        "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} by "
        "`benchmarks/gpu_check.sh` (`python -m bnsgd_numba.bench.gpu`).",
        "",
        *versions,
        f"- device-to-device copy probe: {probe / 1e9:.0f} GB/s (read + write)",
        "",
        "| case | operation | ours ms | torch ms | speed-up vs torch | GB/s | % of probe |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.operation} | {r.ours_ms:.3f} | {fmt(r.torch_ms, '.3f')} | "
            f"{fmt(r.speedup, '.2f')} | {r.gb_per_s:.0f} | {r.percent_of_probe:.0f} |"
        )
    lines += [
        "",
        "Ours writes into preallocated outputs (`out=`), as a training loop does; the "
        "`new y`/`new dx` rows allocate them on every call through numba, which has no "
        "caching allocator (PyTorch's outputs come from its cache). Our training forward "
        "with running statistics reads one integer back from the GPU per call.",
        "",
        "Targets (issue 5, on an H100): forward-train and backward at least as fast as "
        "PyTorch, the SGD arena step at least as fast as torch fused, and at least 70% of "
        "the copy probe's bandwidth. The normalization variants (issue 6) are measured "
        "the same way against PyTorch on this GPU (GB/s: forward reads x and writes y, "
        "backward reads dy and x and writes dx).",
        "",
        *notes,
    ]
    return "\n".join(lines).rstrip() + "\n"


def run(*, smoke: bool, repeat: int, calls: int) -> tuple[list[Row], float, Any]:
    """Run every measurement; return (rows, probe bytes/s, torch or None)."""
    from bnsgd_numba._core import cuda as backend

    backend.require_cuda("bnsgd_numba.bench.gpu")
    if smoke and backend.SIMULATOR:
        from bnsgd_numba import config

        config.GPU_THREADS_PER_BLOCK = backend.WARP_SIZE
    torch = None if backend.SIMULATOR else _torch_cuda()
    synchronize = _sync_all(torch)
    probe = copy_probe(2**16 if smoke else 1 << 30, synchronize, repeat, calls)
    rows: list[Row] = []
    for name, shape, channels_last in SMOKE_BN_CASES if smoke else BN_CASES:
        rows += _bn_case(name, shape, channels_last, torch, synchronize, probe, repeat, calls)
    rows.append(
        _sgd_case(
            SMOKE_SGD_SHAPES if smoke else SGD_SHAPES, torch, synchronize, probe, repeat, calls
        )
    )
    for case in SMOKE_VARIANT_CASES if smoke else VARIANT_CASES:
        rows += _variant_case(*case, torch, synchronize, probe, repeat, calls)
    return rows, probe, torch


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m bnsgd_numba.bench.gpu [--output FILE] [--smoke]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="write the Markdown report here")
    parser.add_argument("--smoke", action="store_true", help="tiny cases (simulator OK)")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--calls", type=int, default=None)
    parser.add_argument("--note", action="append", default=[], help="a line for the report")
    parser.add_argument(
        "--profile", metavar="PATH", help="also write torch.profiler kernel tables here"
    )
    args = parser.parse_args(argv)
    global PROFILE_LOG
    PROFILE_LOG = [] if args.profile else None
    repeat = args.repeat or (1 if args.smoke else 7)
    calls = args.calls or (1 if args.smoke else 20)
    rows, probe, torch = run(smoke=args.smoke, repeat=repeat, calls=calls)
    report = format_report(rows, probe, _versions(torch), args.note)
    print(report)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(report)
    if args.profile:
        with open(args.profile, "w", encoding="utf-8") as handle:
            handle.write("\n".join(PROFILE_LOG or ["(no profile: PyTorch with CUDA is needed)"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
