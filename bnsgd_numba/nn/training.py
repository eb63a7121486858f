"""Training the seed document's network: BN -> Dense+ReLU -> BN -> Dense -> softmax.

:func:`train` builds the network from the library's layers, trains it with
:class:`~bnsgd_numba.SGD` (momentum) over a :class:`~bnsgd_numba.ParameterArena`
and a scheduler from the registry, and reports per-epoch figures.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bnsgd_numba.nn.data import Dataset
from bnsgd_numba.nn.layers import Dense, ReLU, Sequential, loss_and_grad

SCHEDULE_UNITS = ("step", "epoch")
"""What a schedule's steps count (Lightning's ``interval``): batches or epochs."""

BLAS_SMALL_STEP = 2**22
"""Multiply-adds of a step's widest matmul below which ``blas_threads="auto"`` means one thread.

The widest matmul is the first Dense layer's, batch x features x hidden: 1.6
million for the seed's network at batch 32. There a multi-threaded BLAS
spends more on waking and joining its threads than it saves. Measured with
NumPy's OpenBLAS on 2 cores (real MNIST, ``bnsgd-numba train``, 2 epochs):
batch 32 (1.6 million) took 4.4 s with BLAS's 2 threads and 3.6-3.7 s with
one, batch 128 (6.4 million) 3.1 and 3.2 s, batch 512 (25.7 million) 2.7
and 3.1 s.
"""


@dataclass
class TrainConfig:
    """Hyperparameters of a training run (the command line's defaults)."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    hidden: int = 64
    scheduler: str = "warmup_cosine"
    scheduler_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    batch_norm: bool = True
    dtype: str = "float32"
    schedule_unit: str = "step"
    """What the scheduler's steps count: ``"step"`` (one per batch) or ``"epoch"``."""
    blas_threads: int | str | None = "auto"
    """Threads of NumPy's BLAS during the training steps of a CPU run.

    ``"auto"``: one when the step's widest matmul is small
    (:data:`BLAS_SMALL_STEP`), else BLAS's own setting; an int: that many;
    None: BLAS's own setting. The limit holds for the steps only, through
    threadpoolctl, and is lifted afterwards (also on an error); evaluation's
    large matmuls keep every thread. Set it to None when other threads of
    your program use BLAS while :func:`train` runs: the limit is
    process-wide.
    """

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_size < 2 and self.batch_norm:
            raise ValueError("batch_size must be at least 2 with BatchNorm")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.schedule_unit not in SCHEDULE_UNITS:
            raise ValueError(f"schedule_unit must be 'step' or 'epoch', got {self.schedule_unit!r}")
        threads = self.blas_threads
        if not (
            threads is None
            or threads == "auto"
            or (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1)
        ):
            raise ValueError(
                f"blas_threads must be 'auto', None or a positive integer, got {threads!r}"
            )


@dataclass
class EpochRecord:
    """What one epoch measured."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    """Mean learning rate of the epoch's steps."""


@dataclass
class TrainResult:
    """The outcome of :func:`train`."""

    config: TrainConfig
    epochs: list[EpochRecord]
    test_loss: float
    test_accuracy: float
    seconds: float
    model: Sequential = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return {
            "test_accuracy": self.test_accuracy,
            "test_loss": self.test_loss,
            "seconds": self.seconds,
            "epochs": [asdict(record) for record in self.epochs],
            "config": asdict(self.config),
        }


def build_network(
    num_features: int, num_classes: int, config: TrainConfig, rng: np.random.Generator
) -> Sequential:
    """The seed's network; without BatchNorm when ``config.batch_norm`` is off.

    The dense layers draw their initial weights from ``rng`` in the same
    order either way, so the two networks start from the same weights.
    """
    from bnsgd_numba.batch_norm.layer import BatchNorm

    dtype = np.dtype(config.dtype)
    first = Dense(num_features, config.hidden, dtype=dtype, rng=rng)
    second = Dense(config.hidden, num_classes, dtype=dtype, rng=rng)
    layers: list[Any] = []
    if config.batch_norm:
        layers.append(BatchNorm(num_features, dtype=dtype))
    layers += [first, ReLU()]
    if config.batch_norm:
        layers.append(BatchNorm(config.hidden, dtype=dtype))
    layers.append(second)
    return Sequential(layers, dtype=dtype)


class EpochSchedule:
    """A schedule stepped once per epoch by a loop that steps it once per batch.

    :func:`train` calls ``step()`` after every batch; this passes every
    ``steps_per_epoch``-th call on to ``schedule``, so the schedule's steps
    count epochs, as with Lightning's ``interval: "epoch"``.

    Parameters
    ----------
    schedule : Scheduler
        A schedule that does not need a metric.
    steps_per_epoch : int
        Batches per epoch.
    """

    requires_metric = False

    def __init__(self, schedule: Any, steps_per_epoch: int) -> None:
        self.schedule = schedule
        self.steps_per_epoch = steps_per_epoch
        self.calls = 0

    @property
    def lr(self) -> float:
        """The current learning rate."""
        return self.schedule.lr

    def lr_at(self, step: int) -> float:
        """The learning rate after ``step`` batches."""
        return self.schedule.lr_at(step // self.steps_per_epoch)

    def bind(self, optimizer: Any) -> EpochSchedule:
        """Drive ``optimizer`` (see :meth:`Scheduler.bind`)."""
        self.schedule.bind(optimizer)
        return self

    def step(self, metric: float | None = None) -> float:
        """Count a batch; step the schedule at the end of each epoch."""
        if (self.calls + 1) % self.steps_per_epoch == 0:
            self.schedule.step()
        self.calls += 1
        return self.schedule.lr


def make_scheduler(config: TrainConfig, steps_per_epoch: int) -> Any:
    """Create the configured scheduler, filling in lengths it needs from the run.

    The schedule's steps are batches (``config.schedule_unit == "step"``,
    the default) or epochs (``"epoch"``: an :class:`EpochSchedule` steps it
    at the end of each epoch). A schedule that needs a metric
    (``reduce_on_plateau``) steps once per epoch either way.

    Defaults given when the user did not, in the schedule's unit:
    ``warmup_cosine`` warms up from 0 over the first epoch (with epochs as
    the unit: no warmup) and decays to 0 at the end of the run; ``cosine``'s
    ``T_max`` and ``one_cycle``'s ``total_steps`` are the length of the run.
    ``config.lr`` is the schedule's base rate, and ``one_cycle``'s peak,
    ``max_lr`` (it starts at ``max_lr / div_factor``).

    Parameters
    ----------
    config : TrainConfig
        The scheduler's name and parameters, the run's length and unit.
    steps_per_epoch : int
        Batches per epoch.

    Returns
    -------
    Scheduler or EpochSchedule
        Not yet bound to an optimizer.
    """
    from bnsgd_numba.registry import create_scheduler

    per_epoch = config.schedule_unit == "epoch"
    total = config.epochs if per_epoch else config.epochs * steps_per_epoch
    params = dict(config.scheduler_params)
    name = config.scheduler
    if name == "warmup_cosine":
        params.setdefault("init_value", 0.0)
        params.setdefault("warmup_steps", 0 if per_epoch else min(steps_per_epoch, total - 1))
        params.setdefault("decay_steps", total)
    elif name == "cosine":
        params.setdefault("T_max", total)
    elif name == "one_cycle":
        params.setdefault("max_lr", config.lr)
        params.setdefault("total_steps", total)
    if name == "one_cycle":  # its base rate is max_lr / div_factor; --lr is the peak
        schedule = create_scheduler(name, **params)
    else:
        schedule = create_scheduler(name, base_lr=config.lr, **params)
    if per_epoch and not schedule.requires_metric:
        return EpochSchedule(schedule, steps_per_epoch)
    return schedule


def batch_order_rng(seed: int) -> np.random.Generator:
    """The generator whose permutations give each epoch's batch order."""
    return np.random.default_rng([seed, 1])


def evaluate(model: Sequential, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Loss and accuracy of ``model`` in eval mode (:meth:`Sequential.evaluate`)."""
    return model.evaluate(x, y)


def blas_limit(config: TrainConfig, features: int) -> contextlib.AbstractContextManager[Any]:
    """The limit on BLAS's threads :func:`train` runs its CPU steps under.

    Parameters
    ----------
    config : TrainConfig
        Its ``blas_threads``, and for ``"auto"`` the batch size and hidden width.
    features : int
        Inputs per example: the first Dense layer's width in.

    Returns
    -------
    context manager
        threadpoolctl's ``threadpool_limits`` on the BLAS libraries, or one
        that does nothing.
    """
    threads = config.blas_threads
    if threads == "auto":
        widest = config.batch_size * features * config.hidden
        threads = 1 if widest < BLAS_SMALL_STEP else None
    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


def train(
    data: Dataset,
    config: TrainConfig,
    *,
    on_batch: Callable[[int, int, int, float, float], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    device: str = "cpu",
) -> TrainResult:
    """Train the seed's network on ``data``.

    Parameters
    ----------
    data : Dataset
    config : TrainConfig
    on_batch : callable, optional
        Called after every step with (epoch, batch, batches, mean loss so
        far, accuracy so far) — the progress bar.
    on_epoch : callable, optional
        Called with each epoch's :class:`EpochRecord`.
    on_step : callable, optional
        Called after every optimizer step with (step, that batch's loss).
    device : {"cpu", "cuda"}
        Where the network runs.

    Returns
    -------
    TrainResult

    Notes
    -----
    One seed fixes everything random (initial weights, batch order), so a
    run is reproducible bitwise on the CPU. A scheduler that needs a metric
    (``reduce_on_plateau``) steps once per epoch on the validation loss; the
    others step after every optimizer step (with ``config.schedule_unit ==
    "epoch"``, :func:`make_scheduler` passes every epoch's last one on to the
    schedule). A last batch of one example is
    dropped (BatchNorm needs two). On the CPU the steps run NumPy's BLAS on
    ``config.blas_threads`` threads (by default one for small steps such as
    the seed's: 1.2-1.3x faster on 2 cores, and bits that do not depend on
    how many threads BLAS would have used).
    """
    from bnsgd_numba.sgd.optimizer import SGD

    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    start = time.perf_counter()
    model = build_network(
        data.num_features, data.num_classes, config, np.random.default_rng(config.seed)
    )
    if device == "cuda":
        from bnsgd_numba.nn._gpu_training import DeviceRunner

        runner: Any = DeviceRunner(model, data, np.dtype(config.dtype))
    else:
        runner = HostRunner(model, data, np.dtype(config.dtype))
    order_rng = batch_order_rng(config.seed)
    n = len(data.x_train)
    batches = n // config.batch_size + (1 if n % config.batch_size >= 2 else 0)
    optimizer = SGD(
        runner.arena, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = make_scheduler(config, batches)
    scheduler.bind(optimizer)
    cpu = device == "cpu"
    records = []
    for epoch in range(1, config.epochs + 1):
        order = order_rng.permutation(n)
        total_loss = 0.0
        correct = 0
        seen = 0
        lr_sum = 0.0
        # the steps under the BLAS limit; evaluation, between epochs, without it
        with blas_limit(config, data.num_features) if cpu else contextlib.nullcontext():
            for b in range(batches):
                index = order[b * config.batch_size : (b + 1) * config.batch_size]
                loss, batch_correct = runner.forward_backward(index)
                lr_sum += optimizer.lr
                optimizer.step()
                if on_step is not None:
                    on_step(optimizer.steps, loss)
                if not scheduler.requires_metric:
                    scheduler.step()
                total_loss += loss * len(index)
                correct += batch_correct
                seen += len(index)
                if on_batch is not None:
                    on_batch(epoch, b + 1, batches, total_loss / seen, correct / seen)
        val_loss, val_accuracy = runner.evaluate("val")
        if scheduler.requires_metric:
            scheduler.step(val_loss)
        record = EpochRecord(
            epoch, total_loss / seen, correct / seen, val_loss, val_accuracy, lr_sum / batches
        )
        records.append(record)
        if on_epoch is not None:
            on_epoch(record)
    test_loss, test_accuracy = runner.evaluate("test")
    return TrainResult(
        config, records, test_loss, test_accuracy, time.perf_counter() - start, runner.finish()
    )


class HostRunner:
    """Runs the network's steps on the CPU (the GPU's twin is ``DeviceRunner``).

    Parameters
    ----------
    model : Sequential
        The network; its arena is what the optimizer updates.
    data : Dataset
    dtype : numpy dtype
        The network's dtype; the data is cast to it once.
    """

    def __init__(self, model: Sequential, data: Dataset, dtype: np.dtype) -> None:
        self.model = model
        self.arena = model.arena
        self.labels = {"train": data.y_train, "val": data.y_val, "test": data.y_test}
        self.inputs = {
            "train": np.ascontiguousarray(data.x_train, dtype=dtype),
            "val": np.ascontiguousarray(data.x_val, dtype=dtype),
            "test": np.ascontiguousarray(data.x_test, dtype=dtype),
        }

    def forward_backward(self, index: np.ndarray) -> tuple[float, int]:
        """Forward and backward on the training examples ``index``: (loss, correct)."""
        labels = self.labels["train"][index]
        logits = self.model.forward(self.inputs["train"][index], training=True)
        grad = np.empty_like(logits)
        loss, correct = loss_and_grad(logits, labels, grad)
        self.model.backward(grad)
        return loss, correct

    def evaluate(self, split: str) -> tuple[float, float]:
        """Loss and accuracy on ``split`` ("val" or "test") in eval mode."""
        return evaluate(self.model, self.inputs[split], self.labels[split])

    def finish(self) -> Sequential:
        """The trained network (on the host)."""
        return self.model
