"""Before-and-after benchmark of the BatchNorm CPU kernels, for developers.

A change to :mod:`bnsgd_numba.batch_norm._cpu` is judged against the code
it replaces, in one process: this loads that module as it was at a git
revision (``--before``, default ``HEAD``) next to the working tree's, and
times the fused passes of both (forward-eval, forward-train, backward) on
the same arrays in interleaved rounds, with a same-size copy in the same
rounds, the best round of each kept, and the ratio of the two versions'
times round by round (its median and quartiles: a paired comparison, which
a burst of other work on the machine moves less than the best rounds). Both
versions read and write the same arrays: where an output lies changes the
speed of the pass writing it. Two processes, one per version, differ by more
than most changes on a shared machine; interleaved rounds in one process do
not. It also says whether both versions give the same bits, which most
changes of traversal promise.

The old module is compiled from a temporary copy (numba caches it there,
and the copy is deleted afterwards). It imports the working tree's helpers,
so the revision must not be older than the helpers it calls. Run it with
``python benchmarks/bench_kernel_ab.py --before HEAD~1``.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from bnsgd_numba._core.checks import cpu_tunables
from bnsgd_numba._core.compile import caller_pair
from bnsgd_numba._core.layouts import kernel_view
from bnsgd_numba.bench.timing import copier, interleaved_round_seconds

MODULE_PATH = "bnsgd_numba/batch_norm/_cpu.py"
DEFAULT_CASES = ("32x784", "256x784", "4096x784", "256x64x32x32", "256x32x32x64:-1")
OPERATIONS = ("forward-eval", "forward-train", "backward")
SETTLE_SECONDS = 0.02


@dataclass(frozen=True)
class Case:
    """A shape, its channel axis and dtype."""

    shape: tuple[int, ...]
    channel_axis: int
    dtype: np.dtype

    @property
    def label(self) -> str:
        axis = "" if self.channel_axis == 1 else f", axis {self.channel_axis}"
        return f"{self.shape} {self.dtype}{axis}"


@dataclass(frozen=True)
class Row:
    """One operation on one case: the best times before and after, and the copy's."""

    case: str
    operation: str
    before_ms: float
    after_ms: float
    copy_ms: float
    same_bits: bool
    paired: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    """Before's time over after's in each round: (first quartile, median, third quartile)."""

    @property
    def speedup(self) -> float:
        """Before's best time over after's: above 1 when the change is faster."""
        return self.before_ms / self.after_ms


def parse_case(text: str, dtype: str = "float32") -> Case:
    """``"256x64x32x32"`` or ``"256x32x32x64:-1"`` (a channel axis after the colon)."""
    shape_text, _, axis_text = text.partition(":")
    try:
        shape = tuple(int(size) for size in shape_text.split("x"))
        axis = int(axis_text) if axis_text else 1
    except ValueError:
        raise ValueError(f"case {text!r}: expected sizes joined by 'x', then ':axis'") from None
    if len(shape) < 2 or min(shape) < 1 or not -len(shape) <= axis < len(shape):
        raise ValueError(f"case {text!r}: at least 2 positive sizes and a valid axis")
    return Case(shape, axis, np.dtype(dtype))


def load_revision(revision: str, directory: Path) -> ModuleType:
    """The kernel module as it was at ``revision``, compiled from a copy in ``directory``."""
    root = Path(__file__).resolve().parents[2]
    source = subprocess.run(
        ["git", "show", f"{revision}:{MODULE_PATH}"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if source.returncode != 0:
        raise ValueError(f"--before {revision}: {source.stderr.strip()}")
    path = directory / "batch_norm_cpu_before.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("batch_norm_cpu_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _views(case: Case, rng: np.random.Generator) -> dict[str, Any]:
    # the arrays of one case, in the kernels' view: (N, C, S) or (R, C, 1)
    shape, axis = case.shape, case.channel_axis % len(case.shape)
    x = rng.standard_normal(shape).astype(case.dtype) * 2 + 1
    dy = rng.standard_normal(shape).astype(case.dtype)
    layout, x_view = kernel_view(x, axis)
    _, dy_view = kernel_view(dy, axis)
    channels = x_view.shape[1]
    return {
        "layout": layout,
        "x": x_view,
        "dy": dy_view,
        "weight": rng.uniform(0.5, 1.5, channels).astype(case.dtype),
        "bias": rng.standard_normal(channels).astype(case.dtype),
        "running_var": np.ones(channels, case.dtype),
        "running_mean": np.zeros(channels, case.dtype),
        "copy": copier(x),
    }


def _outputs(arrays: dict[str, Any]) -> dict[str, Any]:
    # the arrays the passes write, shared by both versions: where an output
    # lies changes the speed of the pass writing it (4K aliasing, cache sets),
    # so each version writing its own would time their placements as well
    x = arrays["x"]
    channels = x.shape[1]
    return {
        "y": np.empty_like(x),
        "dx": np.empty_like(x),
        "saved": np.empty((2, channels), x.dtype),
        "grads": np.empty((2, channels), x.dtype),
        "running": np.stack([arrays["running_mean"], arrays["running_var"]]),
    }


def _calls(module: ModuleType, arrays: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    # operation -> (a call of that fused pass of ``module``, the arrays it writes)
    x, dy = arrays["x"], arrays["dy"]
    weight, bias = arrays["weight"], arrays["bias"]
    item_elements, rc_columns, serial_below = cpu_tunables()
    passes = module.FUSED_PASSES[arrays["layout"]]

    def build(name: str) -> Any:
        return caller_pair(passes[name]).for_size(x.size)

    parallel = x.size >= serial_below
    y, dx, saved = outputs["y"], outputs["dx"], outputs["saved"]
    grads, running = outputs["grads"], outputs["running"]
    forward_train, forward_eval, backward = (
        build("forward_train"), build("forward_eval"), build("backward")
    )  # fmt: skip
    return {
        "forward-eval": (
            lambda: forward_eval(
                x, y, weight, bias, running[0], running[1], saved[0], saved[1], 1e-5,
                parallel, item_elements, rc_columns, False,
            ),
            (y,),
        ),
        "forward-train": (
            lambda: forward_train(
                x, y, weight, bias, running[0], running[1], saved[0], saved[1], 0.1, 1e-5,
                True, parallel, item_elements, rc_columns, False,
            ),
            (y, saved),
        ),
        "backward": (
            lambda: backward(
                dy, x, dx, weight, saved[0], saved[1], grads[0], grads[1], True,
                parallel, item_elements, rc_columns, False,
            ),
            (dx, grads),
        ),
    }  # fmt: skip


def _same_bits(before: tuple[np.ndarray, ...], after: tuple[np.ndarray, ...]) -> bool:
    return all(
        np.array_equal(a.view(np.uint8), b.view(np.uint8))
        for a, b in zip(before, after, strict=True)
    )


def compare(before: ModuleType, after: ModuleType, cases: Sequence[Case], rounds: int) -> list[Row]:
    """Time both modules' fused passes on each case in interleaved rounds."""
    rows = []
    rng = np.random.default_rng(0)
    for case in cases:
        arrays = _views(case, rng)
        outputs = _outputs(arrays)
        old, new = _calls(before, arrays, outputs), _calls(after, arrays, outputs)
        same = {}
        running = outputs["running"].copy()
        for operation in OPERATIONS:
            # forward-train first: it writes the saved statistics the backward
            # reads; both versions start from the same running statistics
            outputs["running"][...] = running
            old["forward-train"][0]()
            old[operation][0]()
            written = tuple(a.copy() for a in old[operation][1])
            outputs["running"][...] = running
            new["forward-train"][0]()
            new[operation][0]()
            same[operation] = _same_bits(written, new[operation][1])
        functions = {"copy": arrays["copy"]}
        for operation in OPERATIONS:
            functions[f"before {operation}"] = old[operation][0]
            functions[f"after {operation}"] = new[operation][0]
        times = interleaved_round_seconds(functions, repeat=rounds, settle=SETTLE_SECONDS)
        for operation in OPERATIONS:
            before_s, after_s = times[f"before {operation}"], times[f"after {operation}"]
            ratios = np.divide(before_s, after_s)
            rows.append(
                Row(
                    case.label, operation, min(before_s) * 1e3, min(after_s) * 1e3,
                    min(times["copy"]) * 1e3, same[operation],
                    tuple(float(q) for q in np.percentile(ratios, [25, 50, 75])),
                )
            )  # fmt: skip
    return rows


def format_report(rows: Sequence[Row], revision: str) -> str:
    """A Markdown table: before, after, their ratio, the copy and whether the bits agree."""
    lines = [
        f"BatchNorm CPU kernels: {revision} (before) against the working tree (after), "
        "interleaved rounds in one process, best round kept; 'paired' is before / after "
        "round by round, the median and the quartiles (steadier on a shared machine).",
        "",
        "| case | operation | before ms | after ms | before / after | paired median "
        "(quartiles) | copy ms | same bits |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        low, median, high = row.paired
        lines.append(
            f"| {row.case} | {row.operation} | {row.before_ms:.4f} | {row.after_ms:.4f} "
            f"| {row.speedup:.2f} | {median:.2f} ({low:.2f}-{high:.2f}) | {row.copy_ms:.4f} "
            f"| {'yes' if row.same_bits else 'NO'} |"
        )
    if rows:
        product = math.prod(row.speedup for row in rows)
        lines += ["", f"Geometric mean of before / after: {product ** (1 / len(rows)):.3f}."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 when the bits differ)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="HEAD", help="git revision to compare with (HEAD)")
    parser.add_argument(
        "--cases",
        default=",".join(DEFAULT_CASES),
        help="comma-separated shapes such as 32x784 or 256x32x32x64:-1 (channel axis "
        f"after the colon; default {','.join(DEFAULT_CASES)})",
    )
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds: must be >= 1")
    try:
        cases = [parse_case(text, args.dtype) for text in args.cases.split(",")]
    except ValueError as error:
        parser.error(f"--cases: {error}")
    from bnsgd_numba.batch_norm import _cpu  # numba compiles on first use

    with tempfile.TemporaryDirectory(prefix="bnsgd-ab-") as directory:
        try:
            before = load_revision(args.before, Path(directory))
        except ValueError as error:
            parser.error(str(error))
        rows = compare(before, _cpu, cases, args.rounds)
    print(format_report(rows, args.before))
    return 0 if all(row.same_bits for row in rows) else 1
