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

from bnsgd_numba.bench.machine import machine_description
from bnsgd_numba.bench.timing import copy_bandwidth, interleaved_best_seconds

SCALING_SIZES = (10**3, 10**4, 10**5, 10**6, 10**7, 10**8)


def scaling(sizes=SCALING_SIZES, repeat: int = 3) -> list[dict[str, Any]]:
    """Time BN forward, BN backward and the SGD step, ours and PyTorch's, against size."""
    import bnsgd_numba as bn

    try:
        import torch

        torch.set_num_threads(_threads())
    except ImportError:
        torch = None
    points = []
    for size in sizes:
        channels, spatial = 16, 64
        batch = max(2, size // (channels * spatial))
        x = np.random.default_rng(0).standard_normal((batch, channels, spatial)).astype(np.float32)
        dy = np.ones_like(x)
        y = np.empty_like(x)
        rm, rv = np.zeros(channels, np.float32), np.ones(channels, np.float32)
        saved = bn.batch_norm_forward(x, None, None, rm, rv, training=True)
        arena = bn.ParameterArena([(x.size,)])
        arena.grads[0][...] = 1e-3
        optimizer = bn.SGD(arena, lr=0.01, momentum=0.9, weight_decay=1e-4)
        ours = {
            "bn_forward": lambda x=x, y=y, rm=rm, rv=rv: bn.batch_norm_forward(
                x, None, None, rm, rv, training=True, out=y
            ),
            "bn_backward": lambda x=x, dy=dy, s=saved: bn.batch_norm_backward(
                dy, x, None, s.save_mean, s.save_invstd
            ),
            "sgd_step": optimizer.step,
        }
        contenders = {f"ours {k}": f for k, f in ours.items()}
        if torch is not None:
            xt = torch.from_numpy(x)
            rmt, rvt = torch.zeros(channels), torch.ones(channels)
            _, sm, si = torch.ops.aten.native_batch_norm(xt, None, None, rmt, rvt, True, 0.1, 1e-5)[
                :3
            ]
            dyt = torch.from_numpy(dy)
            p = torch.zeros(x.size)
            p.grad = torch.full((x.size,), 1e-3)
            fused = torch.optim.SGD([p], lr=0.01, momentum=0.9, weight_decay=1e-4, fused=True)
            contenders.update(
                {
                    "torch bn_forward": lambda xt=xt, rmt=rmt, rvt=rvt: (
                        torch.nn.functional.batch_norm(xt, rmt, rvt, None, None, True)
                    ),
                    "torch bn_backward": lambda xt=xt, dyt=dyt, rmt=rmt, rvt=rvt, sm=sm, si=si: (
                        torch.ops.aten.native_batch_norm_backward(
                            dyt, xt, None, rmt, rvt, sm, si, True, 1e-5, [True, False, False]
                        )
                    ),
                    "torch sgd_step": fused.step,
                }
            )
        seconds = interleaved_best_seconds(contenders, repeat)
        points.append({"elements": int(x.size), **{k: v for k, v in seconds.items()}})
    return points


def _threads() -> int:
    import numba

    return numba.get_num_threads()


def plot_scaling(points: list[dict[str, Any]], path: str) -> None:
    """Log-log time against elements for each operation, ours against PyTorch."""
    from bnsgd_numba.plotting import _pyplot

    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(14, 4.2), sharex=True)
    sizes = [p["elements"] for p in points]
    titles = {"bn_forward": "BatchNorm forward (train)", "bn_backward": "BatchNorm backward",
              "sgd_step": "SGD step (momentum, weight decay)"}  # fmt: skip
    for ax, (key, title) in zip(axes, titles.items(), strict=True):
        for who, style in (("ours", "o-"), ("torch", "s--")):
            name = f"{who} {key}"
            if name in points[0]:
                label = "bnsgd-numba" if who == "ours" else "PyTorch (CPU, same threads)"
                ax.plot(sizes, [p[name] * 1e3 for p in points], style, label=label)
        ax.set(xscale="log", yscale="log", title=title, xlabel="float32 elements")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("milliseconds per call")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def targets(bn_rows, sgd_rows, startup) -> list[tuple[str, str, bool]]:
    """The speed targets of the issues, each with the measured figure and met or not."""
    found = {(r.case, r.operation): r for r in bn_rows}
    checks = []

    def bn_row(case, operation):
        return found.get((case, operation))

    fwd = bn_row("(256,64,32,32) NCHW", "forward-train")
    bwd = bn_row("(256,64,32,32) NCHW", "backward")
    last = bn_row("(256,64,32,32) channels-last", "forward-train")
    small = bn_row("(32,64)", "forward-train")
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
                "BN forward-train >= 80% of the copy probe (2 reads + 1 write)",
                f"{fwd.percent_of_probe:.0f}% ({fwd.percent_of_same_size_copy:.0f}% of a same-size copy)",
                fwd.percent_of_probe >= 80,
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
    if fwd and last:
        ratio = last.ours_ms / fwd.ours_ms
        checks.append(
            ("channels-last forward-train <= 1.25x the NCHW time", f"{ratio:.2f}x", ratio <= 1.25)
        )
    if small and small.torch_ms:
        ratio = small.ours_ms / small.torch_ms
        checks.append(
            ("(32,64) forward, whole call, <= 0.5x PyTorch's time", f"{ratio:.2f}x", ratio <= 0.5)
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

    lines = [
        "# Benchmark results",
        "",
        "Generated by `bnsgd-numba bench --results benchmarks/RESULTS.md "
        "--plot benchmarks/scaling.png` "
        f"on {datetime.date.today().isoformat()}. Every figure of a table comes from one run, "
        "contenders measured in interleaved rounds (best round kept): the machines are "
        "shared and noisy, so read the ratios, not the absolute times.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".",
        "",
        "## BatchNorm (float32)",
        "",
        batch_norm.format_table(bn_rows, probe),
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
        "- [RESULTS-sgd.md](RESULTS-sgd.md): the SGD benchmark's method and earlier runs.",
        "- [RESULTS-normalizations.md](RESULTS-normalizations.md): the variants, and why the",
        "  2x target is above the copy roofline for layer_norm and group_norm here.",
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
        "--plot", metavar="PATH.png", help="draw time against size, 1e3..1e8 elements"
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
    extra_tables = [*_extra_tables(probe, repeat), _training_table(args.quick)]
    checks = targets(bn_rows, sgd_rows, startup)
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
                 "targets": checks, "scaling": points},
                handle, indent=2,
            )  # fmt: skip
    return 0


def _extra_tables(probe: float, repeat: int) -> list[tuple[str, str]]:
    # Benchmarks of other issues that exist in this installation.
    tables = []
    try:
        from bnsgd_numba.bench import normalizations
    except ImportError:
        return tables
    rows, own_probe = normalizations.run(repeat=repeat)
    tables.append(
        ("Normalization variants (float32)", normalizations.format_table(rows, own_probe))
    )
    return tables


def _training_table(quick: bool) -> tuple[str, str]:
    # the main job, when MNIST is where Keras keeps it: this library against PyTorch eager
    from bnsgd_numba.bench import training

    title = "Training the seed's network on MNIST"
    path = training.DEFAULT_DATA.expanduser()
    if not path.exists():
        return title, (
            f"Not measured: no MNIST at `{path}` (`python ../shared/data/get_mnist.py` writes "
            "it there; `python benchmarks/bench_training.py --data PATH` takes another file)."
        )
    rows = training.run(
        path, speed_epochs=1 if quick else 3, accuracy_epochs=0 if quick else 10,
        rounds=1 if quick else 2,
    )  # fmt: skip
    return title, training.format_table(rows, str(path))


if __name__ == "__main__":
    sys.exit(main())
