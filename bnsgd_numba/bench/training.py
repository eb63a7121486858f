"""Training benchmark: the seed's network on MNIST, this library against PyTorch eager.

Both sides train BN -> Dense 64 + ReLU -> BN -> Dense 10 from the same
initial weights (ours, loaded into ``torch.nn.Sequential`` through
``state_dict``), on the same data file, with the same batches in the same
order (:func:`~bnsgd_numba.nn.training.batch_order_rng`), the same
learning rate at every step (our scheduler's, set on ``torch.optim.SGD``),
the same momentum, and the same work around the steps: the running loss and
accuracy of every batch, a validation pass after every epoch, the test set at
the end. PyTorch runs on ``numba.get_num_threads()`` threads. A run is timed
from the first step to the test accuracy, data loading and compilation
excluded (each side warms up first); speed runs are interleaved round by round
and each side's best round kept. Run it with ``python
benchmarks/bench_training.py``.

:func:`profile_step` says where the time of one step goes, layer by layer.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_DATA = Path("~/.keras/datasets/mnist.npz")
"""Where Keras keeps MNIST (``keras.datasets.mnist.load_data()`` downloads it there)."""


@dataclass
class Row:
    """One case: both sides' speed and test accuracy."""

    case: str
    epochs: int
    batch_size: int
    steps: int
    threads: int
    ours_seconds: float
    ours_steps_per_s: float
    ours_test_accuracy: float
    torch_seconds: float | None
    torch_steps_per_s: float | None
    torch_test_accuracy: float | None
    speedup: float | None
    """Our steps per second over PyTorch's."""


def _steps(n: int, batch_size: int) -> int:
    # train()'s rule: a last batch of one example is dropped
    return n // batch_size + (1 if n % batch_size >= 2 else 0)


def ours(data: Any, config: Any) -> tuple[float, float, float]:
    """Train with :func:`~bnsgd_numba.nn.training.train`; return (seconds, test accuracy, loss)."""
    from bnsgd_numba.nn.training import train

    start = time.perf_counter()
    result = train(data, config)
    return time.perf_counter() - start, result.test_accuracy, result.test_loss


def pytorch(data: Any, config: Any, threads: int) -> tuple[float, float, float]:
    """The same run in PyTorch eager; return (seconds, test accuracy, test loss)."""
    import torch

    from bnsgd_numba.nn.training import batch_order_rng, build_network, make_scheduler

    torch.set_num_threads(threads)
    model = build_network(
        data.num_features, data.num_classes, config, np.random.default_rng(config.seed)
    )
    dtype = getattr(torch, config.dtype)
    net = torch.nn.Sequential(
        torch.nn.BatchNorm1d(data.num_features, dtype=dtype),
        torch.nn.Linear(data.num_features, config.hidden, dtype=dtype),
        torch.nn.ReLU(),
        torch.nn.BatchNorm1d(config.hidden, dtype=dtype),
        torch.nn.Linear(config.hidden, data.num_classes, dtype=dtype),
    )
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    n = len(data.x_train)
    batches = _steps(n, config.batch_size)
    schedule = make_scheduler(config, batches)
    rates = [schedule.lr_at(step) for step in range(config.epochs * batches + 1)]
    optimizer = torch.optim.SGD(
        net.parameters(), lr=rates[0], momentum=config.momentum,
        weight_decay=config.weight_decay,
    )  # fmt: skip
    group = optimizer.param_groups[0]
    x_train = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=config.dtype))
    y_train = torch.from_numpy(data.y_train)
    loss_fn = torch.nn.functional.cross_entropy

    def evaluate(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        net.eval()
        with torch.no_grad():
            logits = net(torch.from_numpy(np.ascontiguousarray(x, dtype=config.dtype)))
            labels = torch.from_numpy(y)
            loss = loss_fn(logits, labels).item()
            accuracy = (logits.argmax(1) == labels).double().mean().item()
        net.train()
        return loss, accuracy

    order_rng = batch_order_rng(config.seed)
    step = 0
    start = time.perf_counter()
    for _ in range(config.epochs):
        order = torch.from_numpy(order_rng.permutation(n))
        total_loss = 0.0
        correct = 0
        for b in range(batches):
            index = order[b * config.batch_size : (b + 1) * config.batch_size]
            x, y = x_train[index], y_train[index]
            optimizer.zero_grad(set_to_none=True)
            logits = net(x)
            loss = loss_fn(logits, y)
            loss.backward()
            optimizer.step()
            step += 1
            group["lr"] = rates[step]
            total_loss += loss.item() * len(index)
            correct += int((logits.argmax(1) == y).sum())
        evaluate(data.x_val, data.y_val)
    loss, accuracy = evaluate(data.x_test, data.y_test)
    return time.perf_counter() - start, accuracy, loss


def _warm_up(data: Any, config: Any, threads: int, with_torch: bool) -> None:
    from bnsgd_numba.nn.data import Dataset

    small = Dataset(
        data.x_train[:256], data.y_train[:256], data.x_val[:64], data.y_val[:64],
        data.x_test[:64], data.y_test[:64], data.num_classes, "warm-up",
    )  # fmt: skip
    short = replace(config, epochs=1)
    ours(small, short)
    if with_torch:
        pytorch(small, short, threads)


def measure(
    data: Any, config: Any, *, rounds: int, threads: int, with_torch: bool, case: str
) -> Row:
    """Run both sides ``rounds`` times, interleaved; keep each side's best round."""
    best_ours = best_torch = float("inf")
    accuracy_ours = accuracy_torch = None
    for _ in range(rounds):
        seconds, accuracy_ours, _ = ours(data, config)
        best_ours = min(best_ours, seconds)
        if with_torch:
            seconds, accuracy_torch, _ = pytorch(data, config, threads)
            best_torch = min(best_torch, seconds)
    steps = config.epochs * _steps(len(data.x_train), config.batch_size)
    torch_rate = steps / best_torch if with_torch else None
    return Row(
        case=case,
        epochs=config.epochs,
        batch_size=config.batch_size,
        steps=steps,
        threads=threads,
        ours_seconds=best_ours,
        ours_steps_per_s=steps / best_ours,
        ours_test_accuracy=float(accuracy_ours),
        torch_seconds=best_torch if with_torch else None,
        torch_steps_per_s=torch_rate,
        torch_test_accuracy=accuracy_torch,
        speedup=None if torch_rate is None else steps / best_ours / torch_rate,
    )


def run(
    data_path: str | Path = DEFAULT_DATA,
    *,
    speed_epochs: int = 3,
    accuracy_epochs: int = 10,
    batch_size: int = 32,
    rounds: int = 2,
) -> list[Row]:
    """Measure the speed case (best of ``rounds``) and the accuracy case (one run each).

    Parameters
    ----------
    data_path : str or Path
        An ``.npz`` file or a directory of IDX files
        (:func:`~bnsgd_numba.nn.data.load_data`).
    speed_epochs, accuracy_epochs : int
        The lengths of the two cases, default schedule (``warmup_cosine``
        over the run); ``accuracy_epochs=0`` skips the second.
    batch_size : int
    rounds : int
        Interleaved rounds of the speed case.

    Returns
    -------
    list of Row

    Raises
    ------
    ValueError
        When the data cannot be loaded (the message names the file).
    """
    import numba

    from bnsgd_numba.nn.data import load_data
    from bnsgd_numba.nn.training import TrainConfig

    data = load_data(data_path)
    threads = numba.get_num_threads()
    try:
        import torch  # noqa: F401

        with_torch = True
    except ImportError:
        with_torch = False
    config = TrainConfig(epochs=speed_epochs, batch_size=batch_size)
    _warm_up(data, config, threads, with_torch)
    rows = [
        measure(
            data,
            config,
            rounds=rounds,
            threads=threads,
            with_torch=with_torch,
            case=f"{speed_epochs} epochs, batch {batch_size}",
        )  # fmt: skip
    ]
    if accuracy_epochs:
        rows.append(
            measure(
                data,
                replace(config, epochs=accuracy_epochs),
                rounds=1,
                threads=threads,
                with_torch=with_torch,
                case=f"{accuracy_epochs} epochs, batch {batch_size}",
            )  # fmt: skip
        )
    return rows


def format_table(rows: list[Row], data_name: str = "") -> str:
    """Return the rows as a Markdown table."""

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    threads = rows[0].threads if rows else 0
    lines = [
        f"Training the seed's network on {data_name or 'MNIST'}: ours (bnsgd_numba.nn.train) "
        f"against PyTorch eager, same weights, batches, schedule and {threads} thread(s); "
        "steps/s over the whole run (validation after each epoch, test at the end).",
        "",
        "| case | steps | ours steps/s | torch steps/s | speed-up | ours test acc "
        "| torch test acc |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.steps} | {r.ours_steps_per_s:.0f} | "
            f"{fmt(r.torch_steps_per_s, '.0f')} | {fmt(r.speedup, '.2f')}x | "
            f"{r.ours_test_accuracy:.4f} | {fmt(r.torch_test_accuracy, '.4f')} |"
        )
    return "\n".join(lines)


def profile_step(
    *, batch_size: int = 32, features: int = 784, steps: int = 2000, seed: int = 0
) -> list[tuple[str, float]]:
    """Where one training step's time goes: (part, microseconds of CPU time) rows.

    Runs the steps of :func:`~bnsgd_numba.nn.training.train` (the runner's
    forward and backward, the SGD step, the scheduler step) on generated
    MNIST-shaped data, with every layer's ``forward``/``backward``, the
    loss, the optimizer and the scheduler timed on their own. Each part is
    the median over the steps of the thread's CPU time (less disturbed by
    other processes than wall time; with more than one numba or BLAS thread
    it misses the other threads' work). "rest" is the step minus the parts:
    batch gathering and the loop's own Python. The wrappers add well under
    a microsecond per call.
    """
    from bnsgd_numba.nn import training
    from bnsgd_numba.nn.data import Dataset
    from bnsgd_numba.sgd.optimizer import SGD

    rng = np.random.default_rng(seed)
    n = 60 * batch_size
    x = (rng.integers(0, 256, (n, features)) / 255.0).astype(np.float32)
    y = rng.integers(0, 10, n)
    data = Dataset(x, y, x[:64], y[:64], x[:64], y[:64], 10, "generated")
    config = training.TrainConfig(batch_size=batch_size)
    model = training.build_network(features, 10, config, np.random.default_rng(seed))
    runner = training.HostRunner(model, data, np.dtype(np.float32))
    optimizer = SGD(runner.arena, lr=config.lr, momentum=config.momentum)
    scheduler = training.make_scheduler(config, steps).bind(optimizer)
    clock = time.thread_time_ns
    samples: dict[str, list[int]] = {}

    def timed(name: str, function: Any) -> Any:
        samples[name] = []
        record = samples[name].append

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            result = function(*args, **kwargs)
            record(clock() - start)
            return result

        return wrapper

    for index, layer in enumerate(model.layers):
        name = f"{index} {type(layer).__name__}"
        layer.forward = timed(f"{name} forward", layer.forward)
    samples["loss (softmax cross-entropy)"] = []
    for index, layer in reversed(list(enumerate(model.layers))):
        name = f"{index} {type(layer).__name__}"
        layer.backward = timed(f"{name} backward", layer.backward)
    loss_and_grad = training.loss_and_grad
    training.loss_and_grad = timed("loss (softmax cross-entropy)", loss_and_grad)
    step_optimizer = timed("SGD step", optimizer.step)
    step_scheduler = timed("scheduler step", scheduler.step)
    totals = []
    order = np.random.default_rng(seed).permutation(n)
    try:
        for step in range(steps):
            b = step % 60
            start = clock()
            runner.forward_backward(order[b * batch_size : (b + 1) * batch_size])
            step_optimizer()
            step_scheduler()
            totals.append(clock() - start)
    finally:
        training.loss_and_grad = loss_and_grad
    skip = steps // 10
    rows = [(name, float(np.median(times[skip:])) / 1e3) for name, times in samples.items()]
    total = float(np.median(totals[skip:])) / 1e3
    rows.append(("rest (batch gather, loop)", total - sum(t for _, t in rows)))
    rows.append(("step", total))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the benchmark table; ``--json PATH`` also writes the rows."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        default=str(DEFAULT_DATA),
        help=f"MNIST: an .npz file or a directory of IDX files (default {DEFAULT_DATA})",
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the speed case")
    parser.add_argument(
        "--accuracy-epochs", type=int, default=10, help="epochs of the accuracy case (0: skip)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved rounds of the speed case"
    )
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument(
        "--profile", action="store_true", help="print where one step's time goes, and stop"
    )
    args = parser.parse_args(argv)
    if args.profile:
        for name, micros in profile_step(batch_size=args.batch_size):
            print(f"{name:32s} {micros:8.1f} us")
        return 0
    path = Path(args.data).expanduser()
    if not path.exists():
        print(
            f"bench training: error: no MNIST at {path} (where keras.datasets.mnist.load_data() "
            "saves it); pass --data FILE.npz or an IDX directory",
            file=sys.stderr,
        )
        return 2
    try:
        rows = run(
            path, speed_epochs=args.epochs, accuracy_epochs=args.accuracy_epochs,
            batch_size=args.batch_size, rounds=args.rounds,
        )  # fmt: skip
    except ValueError as error:
        print(f"bench training: error: {error}", file=sys.stderr)
        return 2
    print(format_table(rows, str(path)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"data": str(path), "rows": [asdict(r) for r in rows]}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
