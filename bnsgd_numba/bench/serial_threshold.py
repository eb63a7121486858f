"""Where the parallel CPU builds start to pay on this machine: a value for ``config.CPU_SERIAL_BELOW``.

Work over fewer than ``config.CPU_SERIAL_BELOW`` elements runs the serial
build of a kernel on the calling thread; larger work runs the parallel one.
Where the parallel build starts to pay depends on the machine: how many
cores are idle, and how long a sleeping worker thread takes to join a
parallel region (on a 2-core virtual machine about 25-50 us, since an idle
virtual CPU is halted). This benchmark measures it for each kernel family
(BatchNorm forward-train and backward on NCHW ``(N, 64, 16, 16)`` and on
``(N, 784)``, and a momentum ``SGD.step``): the public call at each size,
with ``config.CPU_SERIAL_BELOW`` set to 0 (every call parallel) and to
10**12 (every call serial), in interleaved rounds, the best round of each
kept. A family's crossover is the smallest size from which the parallel
build was faster at that size and at every larger one; the suggestion is
the largest crossover. Both builds give the same bits, so the setting
changes speed only. Run it with ``python benchmarks/bench_serial_threshold.py``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnsgd_numba import config
from bnsgd_numba.bench.timing import interleaved_best_seconds

FAMILIES = (
    "BatchNorm forward-train (N, 64, 16, 16)",
    "BatchNorm backward (N, 64, 16, 16)",
    "BatchNorm forward-train (N, 784)",
    "BatchNorm backward (N, 784)",
    "SGD step, momentum",
)
SIZES = tuple(sorted({2**k for k in range(14, 22)} | {3 * 2**k for k in range(14, 17)}))
"""Elements of each measurement: 16,384 (2**14) to 2,097,152 (2**21), with
half steps (3 * 2**k) from 49,152 to 196,608, where the crossovers lie."""

ALL_SERIAL = 10**12
SETTLE_SECONDS = 0.01


@dataclass(frozen=True)
class Point:
    """One family at one size: the best serial and parallel times of a call."""

    family: str
    elements: int
    serial_ms: float
    parallel_ms: float

    @property
    def speedup(self) -> float:
        """Serial time over parallel time: above 1 where the parallel build pays."""
        return self.serial_ms / self.parallel_ms


def _batch_norm_call(
    family: str, elements: int, rng: np.random.Generator
) -> tuple[int, Callable[[], Any]]:
    import bnsgd_numba as bn

    if "(N, 784)" in family:
        shape: tuple[int, ...] = (max(2, elements // 784), 784)
    else:
        shape = (max(1, elements // (64 * 16 * 16)), 64, 16, 16)
    x = rng.standard_normal(shape).astype(np.float32)
    channels = shape[1]
    weight, bias = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    running_mean, running_var = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    out = np.empty_like(x)
    if "forward" in family:
        return x.size, lambda: bn.batch_norm_forward(
            x, weight, bias, running_mean, running_var, training=True, out=out
        )
    dy = rng.standard_normal(shape).astype(np.float32)
    saved = bn.batch_norm_forward(x, weight, bias, training=True)
    return x.size, lambda: bn.batch_norm_backward(
        dy, x, weight, saved.save_mean, saved.save_invstd, out=out
    )


def _sgd_call(elements: int) -> Callable[[], Any]:
    import bnsgd_numba as bn

    arena = bn.ParameterArena(((elements,),))
    arena.flat_grads[...] = 1e-3
    optimizer = bn.SGD(arena, lr=0.01, momentum=0.9)
    return optimizer.step


def _call(family: str, elements: int, rng: np.random.Generator) -> tuple[int, Callable[[], Any]]:
    # (the elements the call's kernels count, the call)
    if family.startswith("SGD"):
        return elements, _sgd_call(elements)
    return _batch_norm_call(family, elements, rng)


def _under_threshold(call: Callable[[], Any], threshold: int) -> Callable[[], Any]:
    def run() -> Any:
        config.CPU_SERIAL_BELOW = threshold
        return call()

    return run


def measure(
    families: Sequence[str] = FAMILIES, sizes: Sequence[int] = SIZES, rounds: int = 9
) -> list[Point]:
    """Time every family at every size, serial and parallel builds in interleaved rounds.

    ``config.CPU_SERIAL_BELOW`` is restored afterwards.
    """
    rng = np.random.default_rng(0)
    saved = config.CPU_SERIAL_BELOW
    points = []
    try:
        for family in families:
            for size in sizes:
                elements, call = _call(family, size, rng)
                functions = {
                    "serial": _under_threshold(call, ALL_SERIAL),
                    "parallel": _under_threshold(call, 0),
                }
                best = interleaved_best_seconds(functions, repeat=rounds, settle=SETTLE_SECONDS)
                points.append(Point(family, elements, best["serial"] * 1e3, best["parallel"] * 1e3))
    finally:
        config.CPU_SERIAL_BELOW = saved
    return points


def crossovers(points: Sequence[Point]) -> dict[str, int | None]:
    """Family -> the smallest size from which the parallel build was faster at every size.

    None when it was not faster at the largest size measured.
    """
    result: dict[str, int | None] = {}
    for family in dict.fromkeys(point.family for point in points):
        crossover = None
        for point in sorted((p for p in points if p.family == family), key=lambda p: -p.elements):
            if point.speedup <= 1.0:
                break
            crossover = point.elements
        result[family] = crossover
    return result


def suggestion(points: Sequence[Point]) -> int | None:
    """The largest crossover of any family, None when one family never crossed over."""
    found = crossovers(points).values()
    if not found or any(value is None for value in found):
        return None
    return max(value for value in found if value is not None)


def format_report(points: Sequence[Point], current: int) -> str:
    """A Markdown table of the serial and parallel times, the crossovers and the suggestion."""
    lines = [
        "Serial against parallel builds, public calls, interleaved rounds, best round kept.",
        "",
        "| family | elements | serial ms | parallel ms | serial / parallel |",
        "|---|---:|---:|---:|---:|",
    ]
    for point in points:
        lines.append(
            f"| {point.family} | {point.elements:,} | {point.serial_ms:.4f} "
            f"| {point.parallel_ms:.4f} | {point.speedup:.2f} |"
        )
    lines.append("")
    for family, crossover in crossovers(points).items():
        where = "never, up to the largest size" if crossover is None else f"from {crossover:,}"
        lines.append(f"- {family}: parallel faster {where}")
    suggested = suggestion(points)
    lines.append("")
    if suggested is None:
        lines.append(
            f"Suggested config.CPU_SERIAL_BELOW: above {max(p.elements for p in points):,} "
            f"(a family never gained from the parallel build here); current {current:,}."
        )
    else:
        lines.append(
            f"Suggested config.CPU_SERIAL_BELOW = {suggested:,} (the largest crossover); "
            f"current {current:,}."
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the report and returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (9)")
    parser.add_argument(
        "--sizes",
        default=",".join(str(size) for size in SIZES),
        help="comma-separated element counts (2**14 to 2**21)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds: must be >= 1")
    try:
        sizes = [int(text) for text in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes: not integers: {args.sizes!r}")
    if any(size < 1 for size in sizes):
        parser.error("--sizes: must be >= 1")
    current = config.CPU_SERIAL_BELOW
    points = measure(FAMILIES, sizes, args.rounds)
    print(format_report(points, current))
    return 0
