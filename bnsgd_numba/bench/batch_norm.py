"""BatchNorm benchmark: ours against PyTorch, NumPy and a memory-copy probe.

Everything is measured side by side in one run, on the same threads, and
reported as ratios: milliseconds, GB/s (counting the memory traffic the
operation cannot avoid), % of the copy probe's bandwidth, and speed-up over
PyTorch. Run it with ``bnsgd-numba bench`` or ``python benchmarks/bench_batch_norm.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bnsgd_numba.bench.timing import copier, copy_bandwidth, interleaved_best_seconds

DEFAULT_CASES = (
    ("(256,64,32,32) NCHW", (256, 64, 32, 32), 1),
    ("(256,64,32,32) channels-last", (256, 64, 32, 32), "channels_last"),
    ("(8,256,56,56) NCHW", (8, 256, 56, 56), 1),
    ("(32,64,56,56) NCHW", (32, 64, 56, 56), 1),
    ("(1024,4096)", (1024, 4096), 1),
    ("(32,64)", (32, 64), 1),
)
"""4-D shapes (the headline first), a wide BatchNorm1d batch, the seed's second BatchNorm."""

SWEEP_CHANNELS = 784
SWEEP_BATCHES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
BATCH_SWEEP = tuple((f"({n},{SWEEP_CHANNELS})", (n, SWEEP_CHANNELS), 1) for n in SWEEP_BATCHES)
"""BatchNorm1d inputs (N, 784), N = 32..4096: (32,784) is the seed's first BatchNorm."""

# Memory traffic per element, in multiples of the array's size:
# forward-train reads x twice (statistics, normalization) and writes y;
# forward-eval reads x and writes y; backward reads dy and x twice and writes dx.
TRAFFIC = {"forward-train": 3, "forward-eval": 2, "backward": 5}


@dataclass
class Row:
    """One measurement: an operation on one case."""

    case: str
    operation: str
    megabytes: float
    ours_ms: float
    torch_ms: float | None
    numpy_ms: float | None
    copy_ms: float
    gb_per_s: float
    percent_of_probe: float
    percent_of_same_size_copy: float
    speedup_vs_torch: float | None


def _inputs(shape: tuple[int, ...], layout: Any, rng: np.random.Generator):
    if layout == "channels_last":
        nhwc = rng.standard_normal((shape[0], *shape[2:], shape[1])).astype(np.float32)
        x = np.moveaxis(nhwc, -1, 1)  # NCHW-shaped view of NHWC memory
        dy = np.moveaxis(rng.standard_normal(nhwc.shape).astype(np.float32), -1, 1)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
    return x, dy


def _numpy_forward_train(x, weight, bias, eps=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean) / np.sqrt(var + eps) * weight.reshape(shape) + bias.reshape(shape)


def _numpy_forward_eval(x, weight, bias, mean, var, eps=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    scale = (weight / np.sqrt(var + eps)).reshape(shape)
    return x * scale + (bias - mean * weight / np.sqrt(var + eps)).reshape(shape)


def _torch_functions(x, dy, weight, bias, running_mean, running_var):
    try:
        import torch
    except ImportError:
        return None
    import numba

    torch.set_num_threads(numba.get_num_threads())
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    wt, bt = torch.from_numpy(weight.copy()), torch.from_numpy(bias.copy())
    rmt, rvt = torch.from_numpy(running_mean.copy()), torch.from_numpy(running_var.copy())
    _, save_mean, save_invstd = torch.ops.aten.native_batch_norm(
        xt, wt, bt, rmt, rvt, True, 0.1, 1e-5
    )[:3]
    return {
        "forward-train": lambda: torch.nn.functional.batch_norm(xt, rmt, rvt, wt, bt, True),
        "forward-eval": lambda: torch.nn.functional.batch_norm(xt, rmt, rvt, wt, bt, False),
        "backward": lambda: torch.ops.aten.native_batch_norm_backward(
            dyt, xt, wt, rmt, rvt, save_mean, save_invstd, True, 1e-5, [True, True, True]
        ),
    }


def run(
    cases=DEFAULT_CASES + BATCH_SWEEP, *, probe: float | None = None, repeat: int = 7
) -> tuple[list[Row], float]:
    """Measure every case; return the rows and the probe's bandwidth in bytes/s.

    NumPy is timed on :data:`DEFAULT_CASES` only (the sweep would double the run).
    """
    probe = copy_bandwidth() if probe is None else probe
    rng = np.random.default_rng(0)
    rows = []
    for name, shape, layout in cases:
        with_numpy = (name, shape, layout) in DEFAULT_CASES
        rows.extend(_measure_case(name, shape, layout, rng, probe, repeat, with_numpy))
    return rows, probe


def _measure_case(name, shape, layout, rng, probe, repeat, with_numpy=True) -> list[Row]:
    import bnsgd_numba as bn

    x, dy = _inputs(shape, layout, rng)
    channels = shape[1]
    weight = np.ones(channels, np.float32)
    bias = np.zeros(channels, np.float32)
    running_mean = np.zeros(channels, np.float32)
    running_var = np.ones(channels, np.float32)
    y = np.empty_like(x)
    dx = np.empty_like(x)
    saved = bn.batch_norm_forward(x, weight, bias, running_mean, running_var, training=True)
    ours = {
        "forward-train": lambda: bn.batch_norm_forward(
            x, weight, bias, running_mean, running_var, training=True, out=y
        ),
        "forward-eval": lambda: bn.batch_norm_forward(
            x, weight, bias, running_mean, running_var, training=False, out=y
        ),
        "backward": lambda: bn.batch_norm_backward(
            dy, x, weight, saved.save_mean, saved.save_invstd, out=dx
        ),
    }
    numpy_functions = {
        "forward-train": lambda: _numpy_forward_train(x, weight, bias),
        "forward-eval": lambda: _numpy_forward_eval(x, weight, bias, running_mean, running_var),
    }
    torch_functions = _torch_functions(x, dy, weight, bias, running_mean, running_var) or {}
    rows = []
    copy = copier(x)
    for operation, function in ours.items():
        contenders = {"ours": function, "copy": copy}
        if operation in torch_functions:
            contenders["torch"] = torch_functions[operation]
        if with_numpy and operation in numpy_functions and x.size <= 2**24:
            contenders["numpy"] = numpy_functions[operation]
        seconds = interleaved_best_seconds(contenders, repeat)
        ours_s, torch_s, numpy_s = seconds["ours"], seconds.get("torch"), seconds.get("numpy")
        rate = TRAFFIC[operation] * x.nbytes / ours_s
        rows.append(
            Row(
                case=name,
                operation=operation,
                megabytes=x.nbytes / 1e6,
                ours_ms=ours_s * 1e3,
                torch_ms=None if torch_s is None else torch_s * 1e3,
                numpy_ms=None if numpy_s is None else numpy_s * 1e3,
                copy_ms=seconds["copy"] * 1e3,
                gb_per_s=rate / 1e9,
                percent_of_probe=100 * rate / probe,
                percent_of_same_size_copy=100 * rate / (2 * x.nbytes / seconds["copy"]),
                speedup_vs_torch=None if torch_s is None else torch_s / ours_s,
            )
        )
    return rows


def startup_seconds() -> dict[str, float]:
    """Time ``import bnsgd_numba`` and a first call with a warm cache, in fresh processes."""
    code = (
        "import time; t0 = time.perf_counter(); import bnsgd_numba as bn; t1 = time.perf_counter();"
        "import numpy as np; x = np.ones((8, 4), np.float32); x[0] = 0;"
        "bn.batch_norm_forward(x, training=True); t2 = time.perf_counter();"
        "print(t1 - t0, t2 - t1)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)  # fill the cache
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    import_s, first_call_s = map(float, result.stdout.split())
    return {"import_s": import_s, "first_call_warm_cache_s": first_call_s}


def format_table(rows: list[Row], probe: float) -> str:
    """Return the rows as a Markdown table."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = [
        f"Copy probe: {probe / 1e9:.1f} GB/s (a 256 MiB parallel copy, 1 read + 1 write "
        "per element). GB/s counts the traffic an operation cannot avoid: forward-train "
        "2 reads + 1 write, forward-eval 1 + 1, backward 4 + 1. 'copy ms' is a parallel "
        "copy of the same array timed in the same rounds, the roofline wherever the data "
        "lives (memory, or this machine's large cache); '% of copy' is ours against it, "
        "counting that traffic.",
        "",
        "| case | MB | operation | ours ms | PyTorch ms | NumPy ms | copy ms | GB/s "
        "| % of probe | % of copy | speed-up vs PyTorch |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.megabytes:.2f} | {r.operation} | {r.ours_ms:.3f} | "
            f"{fmt(r.torch_ms, '.3f')} | {fmt(r.numpy_ms, '.3f')} | {r.copy_ms:.3f} | "
            f"{r.gb_per_s:.1f} | {r.percent_of_probe:.0f}% | "
            f"{r.percent_of_same_size_copy:.0f}% | {fmt(r.speedup_vs_torch, '.2f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark table; ``--json PATH`` also writes the rows."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args(argv)
    rows, probe = run(repeat=3 if args.quick else 7)
    print(format_table(rows, probe))
    startup = startup_seconds()
    print(
        f"\nimport bnsgd_numba: {startup['import_s']:.3f} s; "
        f"first call with a warm cache: {startup['first_call_warm_cache_s']:.3f} s"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"probe_bytes_per_s": probe, "rows": [asdict(r) for r in rows], **startup},
                      handle, indent=2)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
