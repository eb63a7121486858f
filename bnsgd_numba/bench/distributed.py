"""Distributed benchmark: DataParallelSGD's allreduce+step vs the local step, SyncBatchNorm scaling.

``main`` (``python benchmarks/bench_distributed.py``) launches
``mpiexec -n P python -m bnsgd_numba.bench.distributed worker ...`` for each
case and prints Markdown tables; the workers time their work between
barriers and report the slowest rank's time (the step is as slow as its
slowest rank), best of several rounds.

Cases:

- ``sgd``: a float32 arena of ``--parameters`` elements (25M by default, in
  8 tensors), momentum 0.9, weight decay 1e-4: the local fused step
  (``SGD.step``), the gradient averaging alone (in-place Allreduce + divide),
  and ``DataParallelSGD.step`` (agreement + Allreduce + divide + step), on 2
  processes; the local step on 1 process for reference.
- ``bn``: SyncBatchNorm forward + backward (training) of a fixed global batch
  split over 1, 2 and 4 processes (strong scaling), and of a tiny batch whose
  time is the collectives' latency; ``BatchNorm`` on one process for
  reference.

Each case runs as one process with every core (``NUMBA_NUM_THREADS`` = cores),
and as P processes of one thread each (4 processes on 2 cores
oversubscribe).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


# -- worker (runs under mpiexec) ----------------------------------------------------------
def _timer(comm: Any, function: Any, *, repeat: int, min_time: float) -> float:
    """Best-of-``repeat`` mean seconds per call, each round the slowest rank's."""
    from mpi4py import MPI

    function()
    comm.Barrier()
    start = time.perf_counter()
    function()
    once = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
    calls = max(1, int(min_time / max(once, 1e-7)))
    best = float("inf")
    for _ in range(repeat):
        comm.Barrier()
        start = time.perf_counter()
        for _ in range(calls):
            function()
        elapsed = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
        best = min(best, elapsed / calls)
    return best


def _worker_sgd(comm: Any, parameters: int, repeat: int) -> dict[str, Any]:
    from bnsgd_numba import SGD, ParameterArena
    from bnsgd_numba.distributed import DataParallelSGD

    tensors = 8
    sizes = [parameters // tensors] * (tensors - 1)
    sizes.append(parameters - sum(sizes))
    arena = ParameterArena(sizes, dtype=np.float32)
    rng = np.random.default_rng(comm.Get_rank())
    arena.flat_params[...] = rng.standard_normal(arena.size, dtype=np.float32)
    arena.flat_grads[...] = 1e-3 * rng.standard_normal(arena.size, dtype=np.float32)
    keywords = {"lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4}
    local = SGD(arena, **keywords)
    parallel = DataParallelSGD(arena, comm=comm, **keywords)
    times = {
        "local step": _timer(comm, local.step, repeat=repeat, min_time=0.3),
        "allreduce + divide": _timer(
            comm, parallel.allreduce_gradients, repeat=repeat, min_time=0.3
        ),
        "DataParallelSGD.step": _timer(comm, parallel.step, repeat=repeat, min_time=0.3),
    }
    return {"case": "sgd", "parameters": arena.size, "bytes": arena.flat_grads.nbytes, **times}


def _worker_bn(comm: Any, shape: tuple[int, ...], repeat: int) -> dict[str, Any]:
    from bnsgd_numba import BatchNorm
    from bnsgd_numba.distributed import SyncBatchNorm
    from bnsgd_numba.distributed.training import rank_slices

    ranks, rank = comm.Get_size(), comm.Get_rank()
    mine = rank_slices(shape[0], ranks)[rank]
    rng = np.random.default_rng(rank)
    local_shape = (mine.stop - mine.start, *shape[1:])
    x = rng.standard_normal(local_shape, dtype=np.float32)
    dy = rng.standard_normal(local_shape, dtype=np.float32)
    y = np.empty_like(x)
    dx = np.empty_like(x)
    layer = SyncBatchNorm(shape[1], comm=comm)

    def sync_step() -> None:
        layer.forward(x, training=True, out=y)
        layer.backward(dy, out=dx)

    result: dict[str, Any] = {"case": "bn", "shape": list(shape), "ranks": ranks}
    result["SyncBatchNorm fwd+bwd"] = _timer(comm, sync_step, repeat=repeat, min_time=0.2)
    if ranks == 1:
        plain = BatchNorm(shape[1])

        def plain_step() -> None:
            plain.forward(x, training=True, out=y)
            plain.backward(dy, out=dx)

        result["BatchNorm fwd+bwd"] = _timer(comm, plain_step, repeat=repeat, min_time=0.2)
    return result


def worker(argv: list[str]) -> int:
    """Entry point of one rank: ``worker sgd PARAMETERS REPEAT`` or ``worker bn N,C,H,W REPEAT``."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    case, size, repeat = argv[0], argv[1], int(argv[2])
    if case == "sgd":
        result = _worker_sgd(comm, int(size), repeat)
    else:
        result = _worker_bn(comm, tuple(int(v) for v in size.split(",")), repeat)
    result["ranks"] = comm.Get_size()
    if comm.Get_rank() == 0:
        print("BENCH " + json.dumps(result), flush=True)
    return 0


# -- driver --------------------------------------------------------------------------------
def _mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else "mpiexec"


def launch(ranks: int, threads: int, *args: str) -> dict[str, Any]:
    """Run one worker case on ``ranks`` processes of ``threads`` threads; return rank 0's result."""
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    command = [_mpiexec(), "-n", str(ranks), sys.executable, "-m", __name__, "worker", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return {**json.loads(lines[-1][6:]), "threads": threads}


def run(
    parameters: int, bn_shape: tuple[int, ...], ranks: list[int], repeat: int, rounds: int = 3
) -> dict:
    """Every case, ``rounds`` times interleaved; each figure is its best round.

    On a shared machine a burst of other work then hits every case alike
    instead of ruining one of them.
    """
    shape_arg = ",".join(str(v) for v in bn_shape)
    tiny = ",".join(str(v) for v in (8 * max(ranks), bn_shape[1]))
    cores = os.cpu_count() or 1
    # one process with every core, then processes of one thread each
    layouts = [(1, cores)] + [(p, 1) for p in ranks]
    cases = [("sgd", p, t, "sgd", str(parameters)) for p, t in [(1, cores), (1, 1), (2, 1)]]
    cases += [("bn", p, t, "bn", shape_arg) for p, t in layouts]
    cases += [("bn_latency", p, t, "bn", tiny) for p, t in layouts]
    best: dict[tuple[str, int, int], dict[str, Any]] = {}
    for _ in range(rounds):
        for key, p, t, case, size in cases:
            row = launch(p, t, case, size, str(repeat))
            kept = best.setdefault((key, p, t), row)
            for name, value in row.items():
                if isinstance(value, float):
                    kept[name] = min(kept[name], value)
    results: dict[str, list[dict[str, Any]]] = {"sgd": [], "bn": [], "bn_latency": []}
    for (key, _, _), row in best.items():
        results[key].append(row)
    results["rounds"] = rounds  # type: ignore[assignment]
    return results


def format_tables(results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown tables of :func:`run`'s results."""
    lines = []
    rows = results["sgd"]
    gb = rows[0]["bytes"] / 1e9
    lines += [
        f"DataParallelSGD, {rows[0]['parameters'] / 1e6:.1f}M float32 parameters "
        f"({gb * 1e3:.0f} MB of gradients), momentum + weight decay:",
        "",
        "| processes x threads | local step ms | allreduce + divide ms | DataParallelSGD.step ms "
        "| step / local | allreduce algbw GB/s | busbw GB/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        p = row["ranks"]
        reduce_s = row["allreduce + divide"]
        bus = 2 * (p - 1) / p * gb / reduce_s if p > 1 else float("nan")
        lines.append(
            f"| {p} x {row['threads']} | {row['local step'] * 1e3:.1f} | {reduce_s * 1e3:.1f} "
            f"| {row['DataParallelSGD.step'] * 1e3:.1f} "
            f"| {row['DataParallelSGD.step'] / row['local step']:.2f} "
            f"| {gb / reduce_s if p > 1 else float('nan'):.2f} | {bus:.2f} |"
        )
    for key, title in (("bn", "fixed global batch"), ("bn_latency", "tiny batch (latency)")):
        rows = results[key]
        shape = "x".join(str(v) for v in rows[0]["shape"])
        base = next(r for r in rows if r["ranks"] == 1 and r["threads"] == 1)
        base = base["SyncBatchNorm fwd+bwd"]
        lines += [
            "",
            f"SyncBatchNorm forward + backward (training), float32, {title}: global batch {shape}:",
            "",
            "| processes x threads | SyncBatchNorm fwd+bwd ms | speedup vs 1 x 1 "
            "| BatchNorm (1 process) ms |",
            "|---|---|---|---|",
        ]
        for row in rows:
            plain = row.get("BatchNorm fwd+bwd")
            lines.append(
                f"| {row['ranks']} x {row['threads']} | {row['SyncBatchNorm fwd+bwd'] * 1e3:.3f} "
                f"| {base / row['SyncBatchNorm fwd+bwd']:.2f} "
                f"| {'' if plain is None else format(plain * 1e3, '.3f')} |"
            )
    return "\n".join(lines)


def environment() -> str:
    """One line: machine, cores, versions."""
    import mpi4py
    import numba
    from mpi4py import MPI

    library = MPI.Get_library_version().splitlines()[0].strip()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; Python "
        f"{platform.python_version()}, numba {numba.__version__}, numpy {np.__version__}, "
        f"mpi4py {mpi4py.__version__}, {library}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables (``--json`` also writes the results)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parameters", type=int, default=25_000_000)
    parser.add_argument("--bn-shape", default="64,64,32,32", help="global batch N,C,H,W")
    parser.add_argument("--ranks", default="1,2,4", help="process counts for SyncBatchNorm")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds inside a launch")
    parser.add_argument(
        "--rounds", type=int, default=3, help="launches of every case, interleaved; best kept"
    )
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    results = run(
        args.parameters,
        tuple(int(v) for v in args.bn_shape.split(",")),
        [int(v) for v in args.ranks.split(",")],
        args.repeat,
        args.rounds,
    )
    print(environment())
    print()
    print(format_tables(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(worker(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
