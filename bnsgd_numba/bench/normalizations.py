"""Normalization-variant benchmark: layer_norm, group_norm and rms_norm against PyTorch.

Everything runs side by side in one run, on the same threads
(``torch.set_num_threads(numba.get_num_threads())``), float32, in interleaved
rounds (:func:`~bnsgd_numba.bench.timing.interleaved_best_seconds`):

- forward in training (ours: ``layer.forward(x, out=y)``, writing into a
  preallocated output as a training loop does, and ``layer.forward(x)``,
  allocating it; PyTorch: the ATen op that
  also returns what backward needs, ``native_layer_norm`` /
  ``native_group_norm``, and ``F.rms_norm`` with autograd recording);
- backward (ours: ``layer.backward(dy, out=dx)`` and ``layer.backward(dy)``,
  dx and the parameter gradients;
  PyTorch: ``native_layer_norm_backward`` / ``native_group_norm_backward``,
  and autograd through ``F.rms_norm``).

GB/s counts the traffic an operation cannot avoid (forward: read x, write
y; backward: read dy and x, write dx) against the copy probe
(:func:`~bnsgd_numba.bench.timing.copy_bandwidth`, 256 MiB) and against a
parallel copy of the same array timed in the same rounds. Run it with
``python benchmarks/bench_normalizations.py [--markdown PATH]``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bnsgd_numba.bench.timing import copier, copy_bandwidth, interleaved_best_seconds

#: (name, variant, shape, constructor arguments)
DEFAULT_CASES = (
    ("layer_norm (4096, 1024)", "layer_norm", (4096, 1024), ((1024,), {})),
    ("group_norm (32, 64, 56, 56), 8 groups", "group_norm", (32, 64, 56, 56), ((8, 64), {})),
    ("rms_norm (4096, 1024)", "rms_norm", (4096, 1024), ((1024,), {})),
)
#: Minimum memory traffic, in multiples of the input's size.
TRAFFIC = {"forward": 2, "backward": 3}
TARGET_SPEEDUP = 1.0
"""Every row at least at PyTorch's speed."""
ROOFLINE_PERCENT = 80.0
"""PyTorch at this share of the same-size copy's rate or more is at the roofline: ours
must then be within ROOFLINE_SLACK of it (rows of 1 MB or more)."""
ROOFLINE_SLACK = 0.9


@dataclass
class Row:
    """One measurement: an operation on one case."""

    case: str
    operation: str
    megabytes: float
    ours_ms: float
    ours_allocating_ms: float
    torch_ms: float | None
    copy_ms: float
    gb_per_s: float
    percent_of_probe: float
    percent_of_same_size_copy: float
    torch_percent_of_same_size_copy: float | None
    speedup_vs_torch: float | None


def _torch_functions(variant: str, layer: Any, x: np.ndarray, dy: np.ndarray) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {}
    import numba

    torch.set_num_threads(numba.get_num_threads())
    bias = getattr(layer, "bias", None)
    return torch_calls(
        torch, variant, layer, torch.from_numpy(x), torch.from_numpy(dy),
        torch.from_numpy(np.ascontiguousarray(layer.weight)),
        None if bias is None else torch.from_numpy(np.ascontiguousarray(bias)),
    )  # fmt: skip


def torch_calls(
    torch: Any, variant: str, layer: Any, xt: Any, dyt: Any, wt: Any, bt: Any
) -> dict[str, Any]:
    """PyTorch's forward and backward of ``layer``'s variant on tensors (any device).

    layer_norm and group_norm: the ATen training ops (``native_layer_norm``,
    ``native_group_norm`` and their backwards); rms_norm: autograd through
    ``F.rms_norm`` (no fused ATen pair on the CPU). Returns
    ``{"forward": call, "backward": call}``.
    """
    aten = torch.ops.aten
    if variant == "layer_norm":
        shape = list(layer.normalized_shape)
        _, mean, rstd = aten.native_layer_norm(xt, shape, wt, bt, layer.eps)
        return {
            "forward": lambda: aten.native_layer_norm(xt, shape, wt, bt, layer.eps),
            "backward": lambda: aten.native_layer_norm_backward(
                dyt, xt, shape, mean, rstd, wt, bt, [True, True, True]
            ),
        }
    if variant == "group_norm":
        n, c = xt.shape[:2]
        hw = xt[0, 0].numel()
        groups = layer.num_groups
        _, mean, rstd = aten.native_group_norm(xt, wt, bt, n, c, hw, groups, layer.eps)
        return {
            "forward": lambda: aten.native_group_norm(xt, wt, bt, n, c, hw, groups, layer.eps),
            "backward": lambda: aten.native_group_norm_backward(
                dyt, xt, mean, rstd, wt, n, c, hw, groups, [True, True, True]
            ),
        }
    shape = list(layer.normalized_shape)
    eps = layer._eps()
    xg = xt.clone().requires_grad_()
    wg = wt.clone().requires_grad_()
    yg = torch.nn.functional.rms_norm(xg, shape, wg, eps)
    return {
        "forward": lambda: torch.nn.functional.rms_norm(xg, shape, wg, eps),
        "backward": lambda: torch.autograd.grad(yg, (xg, wg), dyt, retain_graph=True),
    }


def measure_case(
    name: str, variant: str, shape: tuple[int, ...], arguments: Any, *, probe: float, repeat: int
) -> list[Row]:
    """Measure forward and backward of one case; return one row each."""
    from bnsgd_numba.registry import create_normalization

    args, kwargs = arguments
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    layer = create_normalization(variant, *args, dtype=np.float32, **kwargs)
    layer.weight[...] = rng.uniform(0.5, 1.5, layer.weight.shape)
    if getattr(layer, "bias", None) is not None:
        layer.bias[...] = rng.uniform(-0.5, 0.5, layer.bias.shape)
    layer.forward(x)
    layer.backward(dy)  # compiled, and the saved input is x
    y = np.empty_like(x)
    dx = np.empty_like(x)
    ours = {
        "forward": lambda: layer.forward(x, out=y),
        "backward": lambda: layer.backward(dy, out=dx),
    }
    allocating = {"forward": lambda: layer.forward(x), "backward": lambda: layer.backward(dy)}
    theirs = _torch_functions(variant, layer, x, dy)
    copy = copier(x)
    rows = []
    for operation, function in ours.items():
        contenders = {"ours": function, "allocating": allocating[operation], "copy": copy}
        if operation in theirs:
            contenders["torch"] = theirs[operation]
        seconds = interleaved_best_seconds(contenders, repeat)
        if operation == "forward":
            layer.forward(x)  # backward uses the last forward's input
        ours_s, torch_s, copy_s = seconds["ours"], seconds.get("torch"), seconds["copy"]
        rate = TRAFFIC[operation] * x.nbytes / ours_s
        copy_rate = 2 * x.nbytes / copy_s
        rows.append(
            Row(
                case=name,
                operation=operation,
                megabytes=x.nbytes / 1e6,
                ours_ms=ours_s * 1e3,
                ours_allocating_ms=seconds["allocating"] * 1e3,
                torch_ms=None if torch_s is None else torch_s * 1e3,
                copy_ms=copy_s * 1e3,
                gb_per_s=rate / 1e9,
                percent_of_probe=100 * rate / probe,
                percent_of_same_size_copy=100 * rate / copy_rate,
                torch_percent_of_same_size_copy=(
                    None
                    if torch_s is None
                    else 100 * TRAFFIC[operation] * x.nbytes / torch_s / copy_rate
                ),
                speedup_vs_torch=None if torch_s is None else torch_s / ours_s,
            )
        )
    return rows


def run(cases: Any = DEFAULT_CASES, *, repeat: int = 7) -> tuple[list[Row], float]:
    """Measure every case; return the rows and the probe's bandwidth in bytes/s."""
    probe = copy_bandwidth()
    rows = []
    for name, variant, shape, arguments in cases:
        rows.extend(measure_case(name, variant, shape, arguments, probe=probe, repeat=repeat))
    return rows, probe


def torch_at_roofline(row: Row) -> bool:
    """Whether the row is 1 MB or more and PyTorch runs at the same-size copy's roofline."""
    torch_percent = row.torch_percent_of_same_size_copy
    return row.megabytes >= 1 and torch_percent is not None and torch_percent >= ROOFLINE_PERCENT


def verdict(row: Row) -> str:
    """The targets of one row: at least PyTorch's speed; within 10% of it at its roofline."""
    if row.speedup_vs_torch is None:
        return "-"
    parts = ["speed-up met" if row.speedup_vs_torch >= TARGET_SPEEDUP else "speed-up MISSED"]
    if torch_at_roofline(row):
        close = row.speedup_vs_torch >= ROOFLINE_SLACK
        parts.append("within 10% at the roofline" if close else "more than 10% behind")
    return ", ".join(parts)


def format_table(rows: list[Row], probe: float) -> str:
    """Return the rows as a Markdown table, with the targets checked."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    percent = lambda v: "-" if v is None else f"{v:.0f}%"  # noqa: E731
    lines = [
        f"Copy probe: {probe / 1e9:.1f} GB/s (256 MiB parallel copy, 1 read + 1 write per "
        "element). Speed-up, GB/s and the targets use ours with out= (PyTorch allocates). "
        "GB/s counts the unavoidable traffic: forward 1 read + 1 write, backward "
        "2 reads + 1 write. 'copy ms' is a parallel copy of the same array timed in the "
        "same rounds; '% of copy' (ours, PyTorch) counts the traffic against it. Targets: "
        f">= {TARGET_SPEEDUP:g}x PyTorch; where PyTorch is at >= {ROOFLINE_PERCENT:g}% of the "
        f"copy (1 MB or more), ours within {100 * (1 - ROOFLINE_SLACK):.0f}% of it.",
        "",
        "| case | operation | ours ms (out=) | ours ms (allocating) | PyTorch ms | copy ms "
        "| speed-up | GB/s | % of probe | % of copy | PyTorch % of copy | targets |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.operation} | {r.ours_ms:.3f} | {r.ours_allocating_ms:.3f} | "
            f"{fmt(r.torch_ms, '.3f')} | {r.copy_ms:.3f} | "
            f"{fmt(r.speedup_vs_torch, '.2f')}x | {r.gb_per_s:.1f} | {r.percent_of_probe:.0f}% | "
            f"{r.percent_of_same_size_copy:.0f}% | {percent(r.torch_percent_of_same_size_copy)} | "
            f"{verdict(r)} |"
        )
    return "\n".join(lines)


def format_machine() -> str:
    """Return the machine and versions as Markdown lines."""
    from bnsgd_numba.bench.machine import machine_description

    machine = machine_description()
    return "\n".join(f"- {key}: {value}" for key, value in machine.items())


def main(argv: list[str] | None = None) -> int:
    """Print the table; ``--json PATH`` writes the rows, ``--markdown PATH`` a report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--markdown", help="write the table and the machine to this file")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args(argv)
    rows, probe = run(repeat=3 if args.quick else 7)
    table = format_table(rows, probe)
    machine = format_machine()
    print(table)
    print()
    print(machine)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"probe_bytes_per_s": probe, "rows": [asdict(r) for r in rows]}, handle)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(f"{table}\n\nMachine and versions:\n\n{machine}\n")
    return 0
