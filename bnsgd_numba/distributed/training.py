"""Data-parallel training of the seed network: the batch split across MPI ranks.

:func:`train_distributed` is :func:`bnsgd_numba.nn.training.train` with every
global batch cut into one contiguous slice per rank, the BatchNorm layers
replaced by :class:`~bnsgd_numba.distributed.SyncBatchNorm` and the optimizer
by :class:`~bnsgd_numba.distributed.DataParallelSGD`. Its parameters after N
steps are those of ``train`` on the full batches, up to the rounding of the
reduction order.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from typing import Any

import numpy as np

from bnsgd_numba.distributed._mpi import resolve_comm
from bnsgd_numba.distributed.errors import (
    RankGuard,
    allgather,
    checked_timeout,
    resolve_timeout,
)
from bnsgd_numba.nn.data import Dataset
from bnsgd_numba.nn.layers import Sequential, softmax_cross_entropy
from bnsgd_numba.nn.training import (
    EpochRecord,
    TrainConfig,
    TrainResult,
    batch_order_rng,
    build_network,
    evaluate,
    make_scheduler,
)


def rank_slices(length: int, ranks: int) -> list[slice]:
    """Split ``range(length)`` into ``ranks`` contiguous slices, sizes differing by <= 1.

    The first ``length % ranks`` ranks take one more element (as
    ``numpy.array_split``); with fewer elements than ranks some slices are
    empty.

    Raises
    ------
    TypeError
        ``length`` or ``ranks`` is not an int.
    ValueError
        ``length < 0`` or ``ranks < 1``.
    """
    for name, value, low in (("length", length, 0), ("ranks", ranks, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value!r}")
    base, extra = divmod(int(length), int(ranks))
    bounds = [0]
    for r in range(ranks):
        bounds.append(bounds[-1] + base + (1 if r < extra else 0))
    return [slice(bounds[r], bounds[r + 1]) for r in range(ranks)]


def synchronize_batch_norm(model: Sequential, comm: Any, *, timeout: Any = "default") -> None:
    """Replace the model's BatchNorm layers by SyncBatchNorm layers over ``comm``, in place.

    The new layers take over the old ones' arrays (parameters and gradients,
    which are views into the model's arena, and running statistics) and
    settings.

    Raises
    ------
    TypeError
        ``model`` is not a :class:`~bnsgd_numba.nn.Sequential`, or ``comm``
        is not a communicator (the model is then unchanged).
    """
    from bnsgd_numba.batch_norm.layer import BatchNorm
    from bnsgd_numba.distributed.sync_batch_norm import SyncBatchNorm

    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a Sequential, got {type(model).__name__}")
    comm = resolve_comm(comm, "synchronize_batch_norm")
    timeout = resolve_timeout(timeout)
    replaced = {}
    for i, layer in enumerate(model.layers):
        if type(layer) is not BatchNorm:
            continue
        sync = SyncBatchNorm(
            layer.num_features, comm=comm, timeout=timeout, eps=layer.eps,
            momentum=layer.momentum, affine=layer.affine,
            track_running_stats=layer.track_running_stats, channel_axis=layer.channel_axis,
            dtype=layer.dtype, on_nonfinite=layer.on_nonfinite,
        )  # fmt: skip
        for name in ("weight", "bias", "grad_weight", "grad_bias", "running_mean", "running_var"):
            setattr(sync, name, getattr(layer, name))
        sync.num_batches_tracked = layer.num_batches_tracked
        replaced[i] = sync
    for i, sync in replaced.items():
        model.layers[i] = sync


def train_distributed(
    data: Dataset,
    config: TrainConfig,
    *,
    comm: Any = None,
    timeout: float | None | str = "default",
    on_batch: Callable[[int, int, int, float, float], None] | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train the seed's network with each global batch split across the ranks of ``comm``.

    Every rank must call it with the same data and config (each takes its
    own slice of every batch); a startup agreement checks it.

    Parameters
    ----------
    data : Dataset
        The whole data set, on every rank.
    config : TrainConfig
        As for :func:`~bnsgd_numba.nn.training.train`; ``batch_size`` is the
        global batch.
    comm : mpi4py communicator, optional
        Default ``MPI.COMM_WORLD``.
    timeout : float, None or "default"
        Deadline of each collective (seconds); past it the job is aborted.
    on_batch, on_epoch, on_step : callable, optional
        As for ``train``, called on rank 0 only. ``on_batch`` receives rank
        0's running loss and accuracy over its own slices; ``on_step``
        receives rank 0's loss on its slice; the epoch records are global.
        ``on_step`` and ``on_batch`` run at the start of the next step (or
        at the end of the epoch), inside its agreement, so that one failing
        fails every rank.

    Returns
    -------
    TrainResult
        The same on every rank (global figures; ``model`` holds
        SyncBatchNorm layers).

    Raises
    ------
    TypeError, ValueError
        ``comm`` is not an mpi4py intra-communicator (on this rank).
    RankFailedError
        On every rank, naming the failing rank(s), when anything fails on
        any rank: at startup (an argument of the wrong type naming it, a bad
        ``timeout``, data or config that differ between ranks, the
        network, the optimizer or the scheduler that cannot be built), or
        in a step, an epoch's evaluation or a callback. It is also an
        instance of the original built-in error (``ValueError``,
        ``TypeError``, ``FloatingPointError``...).

    Notes
    -----
    Batch ``b`` of an epoch is the same set of examples as in ``train``
    (same seed, same order); rank ``r`` takes the ``r``-th contiguous slice
    (:func:`rank_slices`). Each rank scales its mean loss's gradient by
    ``ranks * local / global`` so that the average DataParallelSGD takes is
    the full batch's gradient; SyncBatchNorm uses the full batch's
    statistics. Validation and test figures are computed on every rank
    (identical parameters give identical figures, and a ``reduce_on_plateau``
    schedule steps alike everywhere). One 24-byte Allgather per epoch
    gathers the training loss and accuracy.

    Everything that can fail runs inside a :class:`RankGuard`: the startup
    (which also compares a BLAKE2b digest of the data and config across the
    ranks), each step's forward and backward, each epoch's end, and the
    test evaluation. That costs three agreements at startup, one per step
    and one per epoch, of 16 bytes per rank each.
    """
    from bnsgd_numba.distributed.data_parallel import DataParallelSGD

    comm = resolve_comm(comm, "train_distributed")
    timeout, timeout_error = checked_timeout(timeout)
    ranks = comm.Get_size()
    rank = comm.Get_rank()
    lead = rank == 0
    start = time.perf_counter()
    with RankGuard(
        comm, "train_distributed (startup)", timeout=timeout,
        signature_name="digest of the data and config",
    ) as guard:  # fmt: skip
        if timeout_error is not None:
            raise timeout_error
        _check_arguments(data, config, on_batch=on_batch, on_epoch=on_epoch, on_step=on_step)
        dtype = np.dtype(config.dtype)
        x_train, x_val, x_test = (a.astype(dtype) for a in (data.x_train, data.x_val, data.x_test))
        model = build_network(
            data.num_features, data.num_classes, config, np.random.default_rng(config.seed)
        )
        synchronize_batch_norm(model, comm, timeout=timeout)
        order_rng = batch_order_rng(config.seed)
        n = len(x_train)
        batches = n // config.batch_size + (1 if n % config.batch_size >= 2 else 0)
        scheduler = make_scheduler(config, batches)
        guard.signature = _digest(data, config)
    optimizer = DataParallelSGD(
        model.arena, comm=comm, timeout=timeout, lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay,
    )  # fmt: skip
    with RankGuard(comm, "train_distributed (scheduler)", timeout=timeout):
        scheduler.bind(optimizer)
    records = []
    pending: list[Callable[[], None]] = []  # run inside the next agreement
    for epoch in range(1, config.epochs + 1):
        order = order_rng.permutation(n)
        totals = np.zeros(3, np.float64)  # loss sum, correct, seen (this rank)
        lr_sum = 0.0
        for b in range(batches):
            index = order[b * config.batch_size : (b + 1) * config.batch_size]
            mine = index[rank_slices(len(index), ranks)[rank]]
            with RankGuard(comm, f"training step {optimizer.steps + 1}", timeout=timeout):
                _run(pending)
                loss, correct = _forward_backward(
                    model, x_train[mine], data.y_train[mine], len(index), ranks
                )
            lr_sum += optimizer.lr
            optimizer.step()
            if lead and on_step is not None:
                pending.append(partial(on_step, optimizer.steps, loss))
            if not scheduler.requires_metric:
                pending.append(scheduler.step)
            totals += (loss * len(mine), correct, len(mine))
            if lead and on_batch is not None:
                seen = max(totals[2], 1.0)
                pending.append(
                    partial(on_batch, epoch, b + 1, batches, totals[0] / seen, totals[1] / seen)
                )
        gathered = allgather(
            comm, totals, np.empty((ranks, 3), np.float64), timeout=timeout,
            what="train_distributed (epoch figures)",
        )  # fmt: skip
        with RankGuard(comm, f"train_distributed (end of epoch {epoch})", timeout=timeout):
            _run(pending)
            loss_sum, correct, seen = gathered.sum(axis=0)
            val_loss, val_accuracy = evaluate(model, x_val, data.y_val)
            if scheduler.requires_metric:
                scheduler.step(val_loss)
            record = EpochRecord(
                epoch, loss_sum / seen, correct / seen, val_loss, val_accuracy, lr_sum / batches
            )
            records.append(record)
            if lead and on_epoch is not None:
                on_epoch(record)
    with RankGuard(comm, "train_distributed (test)", timeout=timeout):
        test_loss, test_accuracy = evaluate(model, x_test, data.y_test)
    return TrainResult(
        config, records, test_loss, test_accuracy, time.perf_counter() - start, model
    )


def _check_arguments(data: Any, config: Any, **callbacks: Any) -> None:
    if not isinstance(data, Dataset):
        raise TypeError(f"data must be a Dataset, got {type(data).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    for name, callback in callbacks.items():
        if callback is not None and not callable(callback):
            raise TypeError(f"{name} must be callable or None, got {type(callback).__name__}")


def _digest(data: Dataset, config: TrainConfig) -> int:
    """A 63-bit BLAKE2b digest of the data's arrays and the config, for the agreement."""
    digest = hashlib.blake2b(digest_size=8)
    settings = json.dumps(asdict(config), sort_keys=True, default=repr)
    digest.update(f"{settings}|{data.num_classes}".encode())
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        array = np.ascontiguousarray(getattr(data, name))
        if array.dtype.hasobject:
            raise TypeError(f"data.{name}: expected a numeric array, got dtype object")
        digest.update(f"|{array.dtype.str}{array.shape}|".encode())
        digest.update(array.data)
    return int.from_bytes(digest.digest(), "little") >> 1


def _run(pending: list[Callable[[], None]]) -> None:
    """Run and forget the deferred calls, in order."""
    calls = list(pending)
    pending.clear()
    for call in calls:
        call()


def _forward_backward(
    model: Sequential, x: np.ndarray, y: np.ndarray, global_count: int, ranks: int
) -> tuple[float, int]:
    """Forward and backward on this rank's slice; return its mean loss and correct count.

    The loss gradient is scaled by ``ranks * local / global``: averaged over
    the ranks it is the gradient of the full batch's mean loss.
    """
    logits = model.forward(x, training=True)
    if len(x) == 0:
        model.backward(np.zeros_like(logits))
        return 0.0, 0
    loss, grad = softmax_cross_entropy(logits, y)
    scale = ranks * len(x) / global_count
    if scale != 1.0:
        grad *= grad.dtype.type(scale)
    model.backward(grad)
    return loss, int(np.sum(np.argmax(logits, axis=1) == y))
