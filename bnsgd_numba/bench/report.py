"""All the benchmarks in one run: one table, the targets, a scaling picture, RESULTS.md.

``bnsgd-numba bench`` calls :func:`main`. Everything is measured side by side
in one process, contenders interleaved round by round, so the ratios hold on
a shared, noisy machine even when the absolute times move.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from dataclasses import asdict
from typing import Any

import numpy as np

from bnsgd_numba.bench import timing
from bnsgd_numba.bench.machine import machine_description
from bnsgd_numba.bench.timing import copy_bandwidth, interleaved_best_seconds

SCALING_SIZES = (10**3, 10**4, 10**5, 10**6, 10**7, 10**8)
"""Elements of the 4-D BatchNorm and SGD series: (N, 16, 8, 8) and flat parameters."""

OPERATIONS = {"bn_forward": 3, "bn_backward": 5}
"""BatchNorm operations of the scaling series and their traffic, in array sizes."""


def scaling(sizes=SCALING_SIZES, repeat: int = 3) -> list[dict[str, Any]]:
    """Time BatchNorm forward and backward and the SGD step, ours, PyTorch's and a copy.

    Two BatchNorm series: 4-D (N, 16, 8, 8) inputs of ``sizes`` elements, and
    BatchNorm1d (N, 784) inputs with N = 32..4096; each point also times a
    parallel copy of the same array in the same rounds (the roofline). Every
    point is ``{"series", "elements", "<who> <operation>": seconds, ...}``.
    """
    from bnsgd_numba.bench.batch_norm import SWEEP_BATCHES, SWEEP_CHANNELS

    torch = _torch()
    points = []
    for size in sizes:
        shape = (max(2, size // 1024), 16, 8, 8)
        points.append(_scaling_point("4-D (N,16,8,8)", shape, torch, repeat, sgd=True))
    for batch in SWEEP_BATCHES:
        shape = (batch, SWEEP_CHANNELS)
        points.append(_scaling_point(f"2-D (N,{SWEEP_CHANNELS})", shape, torch, repeat))
    return points


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(_threads())
    return torch


def _scaling_point(series, shape, torch, repeat, sgd=False) -> dict[str, Any]:
    import bnsgd_numba as bn
    from bnsgd_numba.bench.timing import copier

    channels = shape[1]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    dy = np.ones_like(x)
    y = np.empty_like(x)
    dx = np.empty_like(x)
    rm, rv = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    saved = bn.batch_norm_forward(x, None, None, rm, rv, training=True)
    contenders = {
        "ours bn_forward": lambda: bn.batch_norm_forward(
            x, None, None, rm, rv, training=True, out=y
        ),
        "ours bn_backward": lambda: bn.batch_norm_backward(
            dy, x, None, saved.save_mean, saved.save_invstd, out=dx
        ),
        "copy": copier(x),
    }
    if sgd:
        arena = bn.ParameterArena([(x.size,)])
        arena.grads[0][...] = 1e-3
        contenders["ours sgd_step"] = bn.SGD(arena, lr=0.01, momentum=0.9, weight_decay=1e-4).step
    if torch is not None:
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
        rmt, rvt = torch.zeros(channels), torch.ones(channels)
        _, sm, si = torch.ops.aten.native_batch_norm(xt, None, None, rmt, rvt, True, 0.1, 1e-5)[:3]
        contenders["torch bn_forward"] = lambda: torch.nn.functional.batch_norm(
            xt, rmt, rvt, None, None, True
        )
        contenders["torch bn_backward"] = lambda: torch.ops.aten.native_batch_norm_backward(
            dyt, xt, None, rmt, rvt, sm, si, True, 1e-5, [True, False, False]
        )
        if sgd:
            p = torch.zeros(x.size)
            p.grad = torch.full((x.size,), 1e-3)
            contenders["torch sgd_step"] = torch.optim.SGD(
                [p], lr=0.01, momentum=0.9, weight_decay=1e-4, fused=True
            ).step
    seconds = interleaved_best_seconds(contenders, repeat)
    return {"series": series, "elements": int(x.size), **seconds}


def _threads() -> int:
    import numba

    return numba.get_num_threads()


def plot_scaling(points: list[dict[str, Any]], path: str) -> None:
    """Time against elements, ours against PyTorch and against the copy roofline.

    Top row: BatchNorm forward (train) and backward of the 4-D series, and the
    SGD step; bottom row: the same BatchNorm operations on the 2-D series, and
    each BatchNorm series' rate as a share of the same-size copy's.
    """
    from bnsgd_numba.plotting import _pyplot

    plt = _pyplot()
    figure, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    series = list(dict.fromkeys(p["series"] for p in points))
    titles = {"bn_forward": "BatchNorm forward (train)", "bn_backward": "BatchNorm backward",
              "sgd_step": "SGD step (momentum, weight decay)"}  # fmt: skip
    for row, name in enumerate(series):
        chosen = [p for p in points if p["series"] == name]
        sizes = [p["elements"] for p in chosen]
        for ax, key in zip(axes[row], titles, strict=False):
            if f"ours {key}" not in chosen[0]:
                continue
            for who, style, label in (
                ("ours", "o-", "bnsgd-numba"),
                ("torch", "s--", "PyTorch (CPU, same threads)"),
            ):
                if f"{who} {key}" in chosen[0]:
                    ax.plot(sizes, [p[f"{who} {key}"] * 1e3 for p in chosen], style, label=label)
            if key in OPERATIONS:
                roofline = [p["copy"] * OPERATIONS[key] / 2 * 1e3 for p in chosen]
                ax.plot(sizes, roofline, ":", color="gray", label="same-size copy x traffic")
            ax.set(xscale="log", yscale="log", title=f"{titles[key]}, {name}")
            ax.set(xlabel="float32 elements", ylabel="milliseconds per call")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
    share = axes[1][2]
    for name in series:
        chosen = [p for p in points if p["series"] == name]
        sizes = [p["elements"] for p in chosen]
        for key, traffic in OPERATIONS.items():
            for who, style in (("ours", "o-"), ("torch", "s--")):
                if f"{who} {key}" in chosen[0]:
                    rate = [100 * p["copy"] * traffic / 2 / p[f"{who} {key}"] for p in chosen]
                    label = f"{'ours' if who == 'ours' else 'PyTorch'} {key[3:]}, {name}"
                    share.plot(sizes, rate, style, label=label)
    share.axhline(100, color="gray", linestyle=":")
    share.set(xscale="log", title="% of the same-size copy's rate (traffic counted)",
              xlabel="float32 elements", ylabel="%")  # fmt: skip
    share.grid(alpha=0.3, which="both")
    share.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def targets(bn_rows, sgd_rows, startup, variant_rows=()) -> list[tuple[str, str, bool]]:
    """The speed targets, each with the measured figure and met or not."""
    found = {(r.case, r.operation): r for r in bn_rows}
    checks = []

    def bn_row(case, operation):
        return found.get((case, operation))

    fwd = bn_row("(256,64,32,32) NCHW", "forward-train")
    bwd = bn_row("(256,64,32,32) NCHW", "backward")
    last = bn_row("(256,64,32,32) channels-last", "forward-train")
    if fwd and fwd.speedup_vs_torch:
        checks.append(
            (
                "BN forward-train (256,64,32,32) >= 5x PyTorch",
                f"{fwd.speedup_vs_torch:.2f}x",
                fwd.speedup_vs_torch >= 5,
            )
        )
    if fwd:
        checks.append(
            (
                "BN forward-train (256,64,32,32) >= 80% of a same-size copy (2 reads + 1 write)",
                f"{fwd.percent_of_same_size_copy:.0f}% ({fwd.percent_of_probe:.0f}% of the probe)",
                fwd.percent_of_same_size_copy >= 80,
            )
        )
    if bwd and bwd.speedup_vs_torch:
        checks.append(
            (
                "BN backward (256,64,32,32) >= 3x PyTorch",
                f"{bwd.speedup_vs_torch:.2f}x",
                bwd.speedup_vs_torch >= 3,
            )
        )
    if bwd:
        checks.append(
            (
                "BN backward (256,64,32,32) >= 75% of a same-size copy (4 reads + 1 write)",
                f"{bwd.percent_of_same_size_copy:.0f}%",
                bwd.percent_of_same_size_copy >= 75,
            )
        )
    if fwd and last:
        ratio = last.ours_ms / fwd.ours_ms
        checks.append(
            ("channels-last forward-train <= 1.25x the NCHW time", f"{ratio:.2f}x", ratio <= 1.25)
        )
    for case in ("(32,784)", "(32,64)"):
        for operation in ("forward-train", "backward"):
            row = bn_row(case, operation)
            if row and row.speedup_vs_torch:
                checks.append(
                    (
                        f"seed's {case} {operation}, whole call, >= 2x PyTorch",
                        f"{row.speedup_vs_torch:.2f}x",
                        row.speedup_vs_torch >= 2,
                    )
                )
    compared = [r for r in (*bn_rows, *variant_rows) if r.speedup_vs_torch]
    if compared:
        slowest = min(compared, key=lambda r: r.speedup_vs_torch)
        checks.append(
            (
                "no BatchNorm or variant row slower than PyTorch",
                f"slowest {slowest.speedup_vs_torch:.2f}x ({slowest.case}, {slowest.operation})",
                slowest.speedup_vs_torch >= 1,
            )
        )
    if variant_rows:
        from bnsgd_numba.bench.normalizations import ROOFLINE_SLACK, torch_at_roofline

        at_roofline = [r for r in variant_rows if r.speedup_vs_torch and torch_at_roofline(r)]
        if at_roofline:
            slowest = min(at_roofline, key=lambda r: r.speedup_vs_torch)
            checks.append(
                (
                    "variants within 10% of PyTorch where PyTorch is at the copy roofline "
                    "(1 MB or more)",
                    f"slowest {slowest.speedup_vs_torch:.2f}x ({slowest.case}, "
                    f"{slowest.operation})",
                    slowest.speedup_vs_torch >= ROOFLINE_SLACK,
                )
            )
    large = [r for r in bn_rows if r.megabytes >= 1]
    if large:
        lowest = min(large, key=lambda r: r.percent_of_same_size_copy)
        checks.append(
            (
                "BN rows of 1 MB or more >= 80% of a same-size copy",
                f"lowest {lowest.percent_of_same_size_copy:.0f}% ({lowest.case}, "
                f"{lowest.operation})",
                lowest.percent_of_same_size_copy >= 80,
            )
        )
    checks.append(
        ("import bnsgd_numba < 0.5 s", f"{startup['import_s']:.3f} s", startup["import_s"] < 0.5)
    )
    checks.append(
        (
            "first call with a warm cache < 1 s",
            f"{startup['first_call_warm_cache_s']:.2f} s",
            startup["first_call_warm_cache_s"] < 1,
        )
    )
    for r in sgd_rows:
        if r.case.startswith("(a)"):
            if r.speedup_vs_fused:
                checks.append(
                    (
                        "SGD (a) >= 1.2x torch fused=True",
                        f"{r.speedup_vs_fused:.2f}x",
                        r.speedup_vs_fused >= 1.2,
                    )
                )
            if r.speedup_vs_foreach:
                checks.append(
                    (
                        "SGD (a) >= 2x torch default (foreach)",
                        f"{r.speedup_vs_foreach:.2f}x",
                        r.speedup_vs_foreach >= 2,
                    )
                )
            checks.append(
                (
                    "SGD (a) >= 80% of the copy probe (3 reads + 2 writes)",
                    f"{r.percent_of_probe:.0f}%",
                    r.percent_of_probe >= 80,
                )
            )
        if r.case.startswith("(b)") and r.speedup_vs_fused:
            checks.append(
                (
                    "SGD (b) >= 5x torch fused=True",
                    f"{r.speedup_vs_fused:.2f}x",
                    r.speedup_vs_fused >= 5,
                )
            )
    return checks  # fmt: skip


def render(machine, probe, bn_rows, sgd_rows, startup, checks, extra_tables, plot_path) -> str:
    """The Markdown of RESULTS.md."""
    from bnsgd_numba.bench import batch_norm, sgd

    sweep = {name for name, _, _ in batch_norm.BATCH_SWEEP}
    lines = [
        "# Benchmark results",
        "",
        "Generated by `bnsgd-numba bench --results benchmarks/RESULTS.md "
        "--plot benchmarks/scaling.png` "
        f"on {datetime.date.today().isoformat()}. Every figure of a table comes from one run, "
        "contenders measured in interleaved rounds (best round kept), each round "
        f"{timing.SETTLE_SECONDS * 1e3:.0f} ms after the last, so that no contender's "
        "idle threads still spin (PyTorch's OpenMP workers do for about 10 ms): the "
        "machines are shared and noisy, so read the ratios, not the absolute times.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".",
        "",
        "## BatchNorm (float32)",
        "",
        batch_norm.format_table([r for r in bn_rows if r.case not in sweep], probe),
        "",
        f"### BatchNorm1d batch sweep, (N, {batch_norm.SWEEP_CHANNELS})",
        "",
        batch_norm.format_table([r for r in bn_rows if r.case in sweep], probe),
        "",
        f"`import bnsgd_numba`: {startup['import_s']:.3f} s; first call in a fresh process "
        f"with a warm cache (numba's import included): {startup['first_call_warm_cache_s']:.2f} s.",
        "",
        "## SGD step",
        "",
        sgd.format_table(sgd_rows, probe),
        "",
    ]
    for title, table in extra_tables:
        lines += [f"## {title}", "", table, ""]
    lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in checks]
    if plot_path:
        lines += [
            "",
            "## Cost against size",
            "",
            f"![time against size]({plot_path.split('/')[-1]})",
            "",
        ]
    lines += [
        "## More",
        "",
        "- [RESULTS-sgd.md](RESULTS-sgd.md): the SGD benchmark's method and two full runs.",
        "- [RESULTS-normalizations.md](RESULTS-normalizations.md): the variants in more detail,",
        "  and why 2x PyTorch would be above the copy roofline for layer_norm and group_norm.",
        "- [RESULTS-distributed.md](RESULTS-distributed.md): MPI over 1 to 4 ranks.",
        "- [RESULTS-gpu.md](RESULTS-gpu.md): BatchNorm, SGD and the variants on a GPU",
        "  against PyTorch (`bash benchmarks/gpu_check.sh` on a GPU machine).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark; print the tables and targets; optionally plot and write RESULTS.md."""
    parser = argparse.ArgumentParser(prog="bnsgd-numba bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.add_argument(
        "--plot",
        metavar="PATH.png",
        help="draw time against size: 4-D 1e3..1e8 elements and the (N, 784) sweep",
    )
    parser.add_argument(
        "--results", metavar="PATH.md", help="write the Markdown report (RESULTS.md)"
    )
    args = parser.parse_args(argv)

    from bnsgd_numba.bench import batch_norm, sgd

    repeat = 3 if args.quick else 7
    machine = machine_description()
    probe = copy_bandwidth()
    bn_rows, _ = batch_norm.run(probe=probe, repeat=repeat)
    sgd_rows, _ = sgd.run(probe=probe, repeat=repeat)
    startup = batch_norm.startup_seconds()
    extra_tables, variant_rows = _extra_tables(probe, repeat)
    training_table, training_rows = _training_table(args.quick)
    extra_tables.append(training_table)
    checks = targets(bn_rows, sgd_rows, startup, variant_rows)
    points = None
    if args.plot:
        points = scaling(SCALING_SIZES[:-1] if args.quick else SCALING_SIZES)
        plot_scaling(points, args.plot)
    report = render(machine, probe, bn_rows, sgd_rows, startup, checks, extra_tables, args.plot)
    print(report)
    if args.results:
        with open(args.results, "w") as handle:
            handle.write(report)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"machine": machine, "probe_bytes_per_s": probe, "startup": startup,
                 "batch_norm": [asdict(r) for r in bn_rows], "sgd": [asdict(r) for r in sgd_rows],
                 "variants": [asdict(r) for r in variant_rows],
                 "training": [asdict(r) for r in training_rows],
                 "targets": checks, "scaling": points},
                handle, indent=2,
            )  # fmt: skip
    return 0


def _extra_tables(probe: float, repeat: int) -> tuple[list[tuple[str, str]], list[Any]]:
    # Other benchmarks that exist in this installation: their
    # tables, and their rows for the targets.
    try:
        from bnsgd_numba.bench import normalizations
    except ImportError:
        return [], []
    rows, own_probe = normalizations.run(repeat=repeat)
    table = ("Normalization variants (float32)", normalizations.format_table(rows, own_probe))
    return [table], rows


def _training_table(quick: bool) -> tuple[tuple[str, str], list[Any]]:
    # the main job, when MNIST is where Keras keeps it: this library against
    # PyTorch eager; the (title, table) and the rows (none when not measured)
    from bnsgd_numba.bench import training

    title = "Training the seed's network on MNIST"
    path = training.DEFAULT_DATA.expanduser()
    if not path.exists():
        return (title, (
            f"Not measured: no MNIST at `{path}` (where Keras keeps its `mnist.npz`; "
            "`python benchmarks/bench_training.py --data PATH` takes another file)."
        )), []  # fmt: skip
    rows = training.run(
        path, speed_epochs=1 if quick else 3, accuracy_epochs=0 if quick else 10,
        rounds=1 if quick else 2,
    )  # fmt: skip
    return (title, training.format_table(rows, str(path))), rows


if __name__ == "__main__":
    sys.exit(main())
