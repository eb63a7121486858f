"""SGD benchmark: the arena step against torch.optim.SGD and a memory-copy probe.

Momentum 0.9 and weight decay, float32, in one run on the same threads:
(a) 25M parameters over 100 tensors, (b) 1M parameters over 300 small
tensors (a model of many small layers). Ours is ``SGD(arena).step()`` (one
kernel call over the contiguous parameter, gradient and momentum buffers);
ours over a list of arrays (one kernel call per tensor) is shown too.
PyTorch runs its default (foreach) and ``fused=True`` implementations with
``torch.set_num_threads(numba.get_num_threads())``. GB/s counts the traffic a
step cannot avoid: 3 reads (parameter, gradient, momentum) and 2 writes
(parameter, momentum) per element. Run it with ``python benchmarks/bench_sgd.py``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from bnsgd_numba.bench.timing import copy_bandwidth, interleaved_best_seconds

DEFAULT_CASES = (
    ("(a) 25M params / 100 tensors", 25_000_000, 100),
    ("(b) 1M params / 300 tensors", 1_000_000, 300),
)
OPTIONS = {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
ACCESSES_PER_ELEMENT = 5  # 3 reads + 2 writes


@dataclass
class Row:
    """One case: times in milliseconds, rates, speed-ups of the arena step."""

    case: str
    parameters: int
    tensors: int
    arena_ms: float
    list_ms: float
    torch_foreach_ms: float | None
    torch_fused_ms: float | None
    gb_per_s: float
    percent_of_probe: float
    speedup_vs_foreach: float | None
    speedup_vs_fused: float | None


def tensor_sizes(parameters: int, tensors: int) -> list[int]:
    """Split ``parameters`` elements into ``tensors`` sizes differing by at most one."""
    base, extra = divmod(parameters, tensors)
    return [base + (i < extra) for i in range(tensors)]


def _torch_steps(values, grads) -> dict[str, object] | None:
    try:
        import torch
    except ImportError:
        return None
    import numba

    torch.set_num_threads(numba.get_num_threads())
    steps = {}
    for name, fused in (("foreach", None), ("fused", True)):
        params = [torch.from_numpy(v.copy()) for v in values]
        for p, g in zip(params, grads, strict=True):
            p.grad = torch.from_numpy(g)
        optimizer = torch.optim.SGD(params, fused=fused, **OPTIONS)
        steps[name] = optimizer.step
    return steps


def measure(name: str, parameters: int, tensors: int, *, probe: float, repeat: int = 7) -> Row:
    """Time one case: ours (arena and list) and PyTorch (foreach and fused)."""
    import bnsgd_numba as bn

    rng = np.random.default_rng(0)
    sizes = tensor_sizes(parameters, tensors)
    values = [rng.standard_normal(size).astype(np.float32) for size in sizes]
    grads = [rng.standard_normal(size).astype(np.float32) for size in sizes]

    arena = bn.ParameterArena.from_arrays(values)
    for view, grad in zip(arena.grads, grads, strict=True):
        view[...] = grad
    listed = bn.SGD([v.copy() for v in values], **OPTIONS)
    functions = {
        "arena": bn.SGD(arena, **OPTIONS).step,
        "list": lambda: listed.step(grads),
    }
    functions.update(_torch_steps(values, grads) or {})
    seconds = interleaved_best_seconds(functions, repeat)
    arena_s, list_s = seconds["arena"], seconds["list"]
    foreach_s, fused_s = seconds.get("foreach"), seconds.get("fused")
    rate = ACCESSES_PER_ELEMENT * 4 * parameters / arena_s
    return Row(
        case=name,
        parameters=parameters,
        tensors=tensors,
        arena_ms=arena_s * 1e3,
        list_ms=list_s * 1e3,
        torch_foreach_ms=None if foreach_s is None else foreach_s * 1e3,
        torch_fused_ms=None if fused_s is None else fused_s * 1e3,
        gb_per_s=rate / 1e9,
        percent_of_probe=100 * rate / probe,
        speedup_vs_foreach=None if foreach_s is None else foreach_s / arena_s,
        speedup_vs_fused=None if fused_s is None else fused_s / arena_s,
    )


def run(
    cases: Sequence[tuple[str, int, int]] = DEFAULT_CASES,
    *,
    probe: float | None = None,
    repeat: int = 7,
) -> tuple[list[Row], float]:
    """Measure every case; return the rows and the copy probe's bandwidth in bytes/s."""
    probe = copy_bandwidth() if probe is None else probe
    rows = [measure(name, n, k, probe=probe, repeat=repeat) for name, n, k in cases]
    return rows, probe


def format_table(rows: list[Row], probe: float) -> str:
    """Return the rows as a Markdown table."""
    import numba

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        f"Copy probe: {probe / 1e9:.1f} GB/s (1 read + 1 write per element); "
        f"{numba.get_num_threads()} threads for numba and PyTorch. "
        "SGD momentum 0.9, weight decay 1e-4, float32; GB/s counts 3 reads + 2 writes "
        "per element.",
        "",
        "| case | ours: arena ms | ours: list ms | torch foreach ms | torch fused ms "
        "| arena GB/s | % of probe | vs foreach | vs fused |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.arena_ms:.3f} | {r.list_ms:.3f} | "
            f"{fmt(r.torch_foreach_ms, '.3f')} | {fmt(r.torch_fused_ms, '.3f')} | "
            f"{r.gb_per_s:.1f} | {r.percent_of_probe:.0f}% | "
            f"{fmt(r.speedup_vs_foreach, '.2f')}x | {fmt(r.speedup_vs_fused, '.2f')}x |"
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
    if args.json:
        with open(args.json, "w") as handle:
            payload = {"probe_bytes_per_s": probe, "rows": [asdict(r) for r in rows]}
            json.dump(payload, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
