"""bnsgd_numba.distributed: SyncBatchNorm, DataParallelSGD, train --distributed, failures.

The multi-process tests launch ``mpiexec -n 2`` and ``-n 3`` on the scripts
in ``tests/mpi_scripts`` (oversubscribing a 2-core machine works) and check
what every rank reports. They need the ``mpi`` extra (mpi4py and the mpich
wheel, which brings ``mpiexec``) and are skipped without it; the tests at the
top need neither. Every launch has a wall-clock limit, and the ranks a
collective deadline (``BNSGD_NUMBA_MPI_TIMEOUT``), so nothing hangs.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).parent / "mpi_scripts"
LAUNCH_LIMIT = 120  # seconds for one mpiexec run (cold numba cache included)


# -- without MPI -------------------------------------------------------------------------


def test_registry_works_without_mpi4py():
    """The plugin registers without mpi4py; creating the layer names the extra."""
    code = (
        "import sys; sys.modules['mpi4py'] = None\n"
        "import bnsgd_numba as bn\n"
        "assert 'sync_batch_norm' in bn.available_normalizations()\n"
        "try:\n"
        "    bn.create_normalization('sync_batch_norm', 3)\n"
        "except ImportError as error:\n"
        "    print('IMPORT-ERROR', error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=LAUNCH_LIMIT
    )
    assert done.returncode == 0, done.stderr
    assert "IMPORT-ERROR" in done.stdout
    assert "bnsgd-numba[mpi]" in done.stdout


def test_timeout_setting(monkeypatch):
    from bnsgd_numba.distributed.errors import DEFAULT_TIMEOUT, TIMEOUT_ENV, resolve_timeout

    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert resolve_timeout() == DEFAULT_TIMEOUT
    assert resolve_timeout(2) == 2.0
    assert resolve_timeout(None) is None
    assert resolve_timeout(0) is None
    monkeypatch.setenv(TIMEOUT_ENV, "7.5")
    assert resolve_timeout() == 7.5
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=TIMEOUT_ENV):
        resolve_timeout()
    for bad in (-1, float("nan"), "1"):
        with pytest.raises(ValueError, match="timeout"):
            resolve_timeout(bad)
    for bad in (True, [1.0], object()):
        with pytest.raises(TypeError, match="timeout"):
            resolve_timeout(bad)


def test_rank_failed_error_keeps_the_builtin_type():
    from bnsgd_numba.distributed.errors import RankFailedError, _error_class

    error = _error_class("ValueError")(
        "SyncBatchNorm.backward", {2: "ValueError: x: bad"}, 3, {2: "training step 4"}
    )
    assert isinstance(error, ValueError) and isinstance(error, RankFailedError)
    assert error.rank == 2
    assert str(error) == (
        "rank 2 of 3 failed in training step 4: ValueError: x: bad "
        "(raised here in SyncBatchNorm.backward)"
    )
    plain = _error_class("SomethingElse")("op", {0: "E: m", 1: "E: n"}, 2)
    assert type(plain) is RankFailedError
    assert str(plain) == "rank 0 of 2 failed in op: E: m; rank 1 of 2 failed in op: E: n"
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and isinstance(copy, ValueError)
    key = _error_class("KeyError")("op", {1: "KeyError: 'w'"}, 2)
    assert isinstance(key, KeyError) and str(key) == "rank 1 of 2 failed in op: KeyError: 'w'"


def test_rank_slices_cover_the_batch():
    from bnsgd_numba.distributed.training import rank_slices

    for length in range(0, 12):
        for ranks in range(1, 5):
            slices = rank_slices(length, ranks)
            sizes = [s.stop - s.start for s in slices]
            assert sum(sizes) == length and max(sizes) - min(sizes) <= 1
            assert [s.start for s in slices[1:]] == [s.stop for s in slices[:-1]]


def test_rank_failed_error_names_ranks_that_failed_alike_once():
    from bnsgd_numba.distributed.errors import _error_class

    same = "ValueError: --data: no such file: x.npz"
    failures = {0: same, 1: same, 2: same, 4: same, 5: "TypeError: other"}
    error = _error_class("ValueError")("startup", failures, 6)
    assert str(error) == (
        f"ranks 0-2, 4 of 6 failed in startup: {same}; rank 5 of 6 failed in startup: "
        "TypeError: other"
    )
    pair = _error_class("ValueError")("startup", {0: same, 1: same}, 2)
    assert str(pair) == f"ranks 0, 1 of 2 failed in startup: {same}"


def test_rank_slices_rejects_bad_arguments():
    from bnsgd_numba.distributed.training import rank_slices

    for length, ranks, error, name in (
        (5, 0, ValueError, "ranks"), (-1, 2, ValueError, "length"),
        (5.0, 2, TypeError, "length"), (5, True, TypeError, "ranks"),
    ):  # fmt: skip
        with pytest.raises(error, match=name):
            rank_slices(length, ranks)


# -- one process, in this interpreter (mpi4py only) ---------------------------------------


@pytest.fixture(scope="module")
def mpi():
    pytest.importorskip("mpi4py", reason="needs the mpi extra: pip install 'bnsgd-numba[mpi]'")
    from mpi4py import MPI

    return MPI


def test_one_rank_sync_batch_norm_is_batch_norm_bitwise(mpi):
    from bnsgd_numba import BatchNorm
    from bnsgd_numba.distributed import SyncBatchNorm

    rng = np.random.default_rng(1)
    for dtype, shape, axis in ((np.float32, (6, 3, 5), 1), (np.float64, (9, 4), -1)):
        channels = shape[axis]
        ref = BatchNorm(channels, dtype=dtype, channel_axis=axis, momentum=None)
        sync = SyncBatchNorm(channels, dtype=dtype, channel_axis=axis, momentum=None,
                             comm=mpi.COMM_SELF)  # fmt: skip
        for _ in range(2):
            x = rng.normal(2.0, 3.0, shape).astype(dtype)
            dy = rng.normal(size=shape).astype(dtype)
            np.testing.assert_array_equal(sync.forward(x), ref.forward(x))
            np.testing.assert_array_equal(sync.backward(dy), ref.backward(dy))
            for name in ("grad_weight", "grad_bias", "running_mean", "running_var"):
                np.testing.assert_array_equal(getattr(sync, name), getattr(ref, name))
        np.testing.assert_array_equal(sync.forward(x, training=False), ref.forward(x, False))
        assert sync.state_dict().keys() == ref.state_dict().keys()


def test_one_rank_bad_input_keeps_the_error_type(mpi):
    from bnsgd_numba.distributed import RankFailedError, SyncBatchNorm

    layer = SyncBatchNorm(3, dtype=np.float64, comm=mpi.COMM_SELF)
    with pytest.raises(TypeError, match=r"rank 0 of 1 failed in SyncBatchNorm.forward: .*dtype"):
        layer.forward(np.ones((4, 3), np.float32))
    with pytest.raises(RankFailedError, match="expected 3 channels"):
        layer.forward(np.ones((4, 2)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer.forward(np.ones((1, 3)))
    assert layer.num_batches_tracked == 0
    np.testing.assert_array_equal(layer.running_var, 1.0)
    with pytest.raises(NotImplementedError):
        layer.to_device()


def test_sync_batch_norm_conforms_through_the_registry(mpi):
    from bnsgd_numba.testing import normalization_cases
    from bnsgd_numba.testing.checks import NORMALIZATION_CHECKS

    cases = normalization_cases(["sync_batch_norm"])
    assert len(cases) == 3
    for case in cases:
        for check in NORMALIZATION_CHECKS:
            check(case)


def test_one_rank_data_parallel_sgd_is_sgd_bitwise(mpi):
    from bnsgd_numba import SGD, ParameterArena
    from bnsgd_numba.distributed import DataParallelSGD

    rng = np.random.default_rng(2)
    shapes = [(3, 4), (4,), (5,)]
    a = ParameterArena(shapes)
    b = ParameterArena(shapes)
    a.flat_params[...] = b.flat_params[...] = rng.normal(size=a.size)
    keywords = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    plain = SGD(a, **keywords)
    parallel = DataParallelSGD(b, comm=mpi.COMM_SELF, bucket_elements=5, **keywords)
    for _ in range(3):
        a.flat_grads[...] = b.flat_grads[...] = rng.normal(size=a.size)
        plain.step()
        parallel.step()
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    assert parallel.parameters_in_sync()
    with pytest.raises(TypeError, match="rank 0 of 1 failed in DataParallelSGD.step: .*grads"):
        parallel.step([np.zeros(12)])
    with pytest.raises(TypeError, match="ParameterArena"):
        DataParallelSGD([np.zeros(3)], comm=mpi.COMM_SELF, lr=0.1)
    with pytest.raises(ValueError, match="bucket_elements"):
        DataParallelSGD(b, comm=mpi.COMM_SELF, lr=0.1, bucket_elements=0)


def test_rank_guard_checks_its_arguments(mpi):
    from bnsgd_numba.distributed import RankGuard

    for arguments, keywords, error, name in (
        ((mpi.COMM_SELF, 3), {}, TypeError, "where"),
        ((mpi.COMM_SELF, "op"), {"timeout": "soon"}, ValueError, "timeout"),
        ((mpi.COMM_SELF, "op"), {"timeout": True}, TypeError, "timeout"),
        ((mpi.COMM_SELF, "op"), {"signature": "7"}, TypeError, "signature"),
        ((mpi.COMM_SELF, "op"), {"signature": -2}, ValueError, "signature"),
        ((object(), "op"), {}, TypeError, "comm"),
        ((mpi.COMM_NULL, "op"), {}, ValueError, "comm"),
    ):
        with pytest.raises(error, match=name):
            RankGuard(*arguments, **keywords)
    with RankGuard(None, "op") as guard:  # COMM_WORLD, the default deadline
        guard.signature = 3
    assert guard.comm.Get_size() == 1
    with pytest.raises(TypeError, match="signature"):
        guard.signature = 1.5


def test_data_parallel_sgd_names_bad_arguments_and_writes_nothing(mpi):
    from bnsgd_numba import ParameterArena
    from bnsgd_numba.distributed import DataParallelSGD, RankFailedError

    arena = ParameterArena([(3,), (2, 2)], dtype=np.float64)
    arena.flat_params[...] = np.arange(arena.size)
    arena.flat_grads[...] = 1.0
    before = arena.flat_params.copy()
    for keywords, error, name in (
        ({"bucket_elements": 2.5}, TypeError, "bucket_elements"),
        ({"bucket_elements": "4"}, TypeError, "bucket_elements"),
        ({"bucket_elements": 0}, ValueError, "bucket_elements"),
        ({"timeout": "soon"}, ValueError, "timeout"),
        ({"timeout": [1]}, TypeError, "timeout"),
        ({"lr": -1.0}, ValueError, "lr"),
    ):
        with pytest.raises(error, match=name) as caught:
            DataParallelSGD(arena, comm=mpi.COMM_SELF, **{"lr": 0.1, **keywords})
        assert isinstance(caught.value, RankFailedError), keywords  # raised on every rank
        np.testing.assert_array_equal(arena.flat_params, before)
    with pytest.raises(ValueError, match="comm is MPI.COMM_NULL"):
        DataParallelSGD(arena, comm=mpi.COMM_NULL, lr=0.1)
    optimizer = DataParallelSGD(arena, comm=mpi.COMM_SELF, lr=0.1)
    for root, error in ((1, ValueError), (-1, ValueError), ("0", TypeError), (0.0, TypeError)):
        with pytest.raises(error, match="root"):
            optimizer.sync_parameters(root)
    optimizer.sync_parameters(np.int64(0))
    np.testing.assert_array_equal(arena.flat_params, before)


def _tiny_dataset(rows: int = 12):
    from bnsgd_numba.nn.data import Dataset

    rng = np.random.default_rng(5)
    x = rng.normal(size=(rows, 3))
    y = rng.integers(0, 2, rows)
    return Dataset(x, y, x[:4], y[:4], x[:4], y[:4], num_classes=2, name="tiny")


def test_train_distributed_names_bad_arguments_on_every_rank(mpi):
    from bnsgd_numba.distributed import RankFailedError, train_distributed
    from bnsgd_numba.distributed.training import synchronize_batch_norm
    from bnsgd_numba.nn.training import TrainConfig

    data = _tiny_dataset()
    config = TrainConfig(epochs=1, batch_size=4, hidden=4, scheduler="cosine", dtype="float64")
    for arguments, keywords, error, name in (
        (([1, 2], config), {}, TypeError, "data"),
        ((data, {"epochs": 1}), {}, TypeError, "config"),
        ((data, config), {"on_epoch": 5}, TypeError, "on_epoch"),
        ((data, config), {"timeout": -1}, ValueError, "timeout"),
    ):
        with pytest.raises(error, match=name) as caught:
            train_distributed(*arguments, comm=mpi.COMM_SELF, **keywords)
        assert isinstance(caught.value, RankFailedError)
        assert "train_distributed (startup)" in str(caught.value)
    with pytest.raises(TypeError, match="model"):
        synchronize_batch_norm([1], mpi.COMM_SELF)


def test_a_failing_callback_fails_train_distributed_on_every_rank(mpi):
    from bnsgd_numba.distributed import RankFailedError, train_distributed
    from bnsgd_numba.nn.training import TrainConfig

    config = TrainConfig(epochs=2, batch_size=4, hidden=4, scheduler="cosine", dtype="float64")

    def stop(record):
        raise ValueError("stop here")

    with pytest.raises(ValueError, match="failed in train_distributed .end of epoch 1.: .*stop"):
        train_distributed(_tiny_dataset(), config, comm=mpi.COMM_SELF, on_epoch=stop)
    steps = []

    def step_then_fail(step, loss):
        steps.append(step)
        if step == 2:
            raise KeyError("no step 2")

    with pytest.raises(RankFailedError, match="failed in training step 3: KeyError"):
        train_distributed(_tiny_dataset(), config, comm=mpi.COMM_SELF, on_step=step_then_fail)
    assert steps == [1, 2]


def test_train_command_distributed_checks_output_paths_before_training(mpi, tmp_path, capsys):
    from bnsgd_numba.cli import main

    data = tmp_path / "tiny.npz"
    x = np.random.default_rng(0).integers(0, 255, (30, 4)).astype(np.uint8)
    y = (x.sum(axis=1) % 3).astype(np.int64)
    np.savez(data, x_train=x[:20], y_train=y[:20], x_test=x[20:], y_test=y[20:])
    for option, value in (("--json", "no/such/dir/x.json"), ("--json", str(tmp_path))):
        code = main(["train", "--distributed", "--data", str(data), "--epochs", "1",
                     "--batch-size", "10", "--hidden", "4", option, value])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bnsgd-numba train: error: "), err
        assert option in lines[0]


# -- several processes ----------------------------------------------------------------------


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"  # the mpich wheel's, matching mpi4py
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _mpi_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("BNSGD_NUMBA_MPI_TIMEOUT", "60")
    # harmless for MPICH; lets Open MPI oversubscribe and run as root
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")  # fmt: skip
    return env


def _run_limited(command: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    """Run ``command``; fail the test, killing every process it started, past LAUNCH_LIMIT."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True, **kw,
    ) as process:  # fmt: skip
        try:
            out, err = process.communicate(timeout=LAUNCH_LIMIT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            pytest.fail(f"{' '.join(command)} hung for {LAUNCH_LIMIT} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


@pytest.fixture(scope="module")
def launch(mpi):
    """Return run(ranks, script, *args) -> CompletedProcess, after warming numba's cache."""
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install 'bnsgd-numba[mpi]' brings one)")
    env = _mpi_environment()

    def run(ranks: int, script: str, *args: str) -> subprocess.CompletedProcess:
        command = [mpiexec, "-n", str(ranks), sys.executable, str(SCRIPTS / script), *args]
        return _run_limited(command, env)

    # one process first: compiles (and caches) the kernels once instead of in every rank
    for script in ("sync_batch_norm.py", "distributed_training.py"):
        warm = run(1, script)
        assert warm.returncode == 0, warm.stdout + warm.stderr
    return run


def _results(done: subprocess.CompletedProcess, ranks: int) -> list[dict]:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    results = sorted((json.loads(line[7:]) for line in lines), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == list(range(ranks)), done.stdout
    assert all(r["ranks"] == ranks for r in results), "mpiexec and mpi4py use different MPIs"
    return results


@pytest.mark.parametrize("ranks", [2, 3])
def test_sync_batch_norm_on_unequal_parts_is_batch_norm_on_the_whole_batch(launch, ranks):
    # forward, dx, summed parameter gradients, running statistics (momentum and
    # cumulative), eval, channels-last, affine off, no running stats: float64
    # within 1e-12 of the largest value, float32 within 1e-5; parts 5+2 and 4+0+3.
    results = _results(launch(ranks, "sync_batch_norm.py"), ranks)
    counts = {r["checks"] for r in results}
    assert counts == {51}, counts
    for result in results:
        float64 = [v for k, v in result["worst"].items() if not k.startswith("float32")]
        assert max(float64) <= 1e-12


@pytest.mark.parametrize("ranks", [2, 3])
def test_distributed_training_matches_single_process_training(launch, ranks):
    # 2 epochs x 3 batches (16, 16, 5 examples) = 6 steps of momentum SGD with
    # weight decay and a cosine schedule, float64: every parameter and running
    # statistic within 1e-12 of the largest value of its tensor, and bitwise
    # identical across ranks.
    results = _results(launch(ranks, "distributed_training.py"), ranks)
    assert all(r["in_sync"] for r in results)
    assert max(r["worst"] for r in results) <= 1e-12


def _failure(
    launch, ranks: int, mode: str, reports: Path
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run failure.py; return the process and each rank's report line, by rank."""
    done = launch(ranks, "failure.py", mode, str(reports))
    lines = [
        (reports / f"rank{r}.txt").read_text() if (reports / f"rank{r}.txt").exists() else ""
        for r in range(ranks)
    ]
    return done, lines


def test_bad_input_on_one_rank_ends_every_rank_with_a_clear_error(launch, tmp_path):
    done, lines = _failure(launch, 3, "bad_input", tmp_path)
    assert done.returncode != 0
    for rank, line in enumerate(lines):
        assert line.startswith(f"RANK {rank} RankFailedValueError value_error=True"), line
        assert line.endswith(
            "rank 2 of 3 failed in SyncBatchNorm.forward: ValueError: x: expected 4 channels "
            "on axis 1, got shape (3, 5)"
        ), line
    assert "finished without an error" not in done.stdout


def test_exception_in_a_training_step_on_one_rank_ends_every_rank(launch, tmp_path):
    # the last rank fails in its loss while the others are in SyncBatchNorm.backward
    done, lines = _failure(launch, 2, "train_step", tmp_path)
    assert done.returncode != 0
    for line in lines:
        assert "value_error=True" in line
        assert "rank 1 of 2 failed in training step 1: ValueError: labels must be in [0, 3)" in line
    assert "raised here in SyncBatchNorm.backward" in lines[0]


def test_a_rank_that_never_joins_is_aborted_after_the_deadline(launch, tmp_path):
    start = time.perf_counter()
    done, lines = _failure(launch, 2, "hang", tmp_path)
    seconds = time.perf_counter() - start
    assert done.returncode != 0
    assert lines == ["", ""]  # no rank got an error: the deadline ended them
    assert (
        "rank 0 of 2: SyncBatchNorm.forward (agreement) did not complete within 2 s: rank 1 "
        "did not answer (busy, stuck, waiting outside bnsgd_numba's collectives, or exited "
        "before its first one on this communicator); calling MPI_Abort (error code 75)"
    ) in done.stderr
    assert seconds < 30  # the silent rank sleeps 60 s: the abort ended it


@pytest.mark.parametrize(
    "mode, message",
    [
        (  # the traceback, then one line from the failing rank
            "raise_outside",
            "bnsgd_numba.distributed: rank 1 of 2 ended with an uncaught RuntimeError: not in "
            "a guard; calling MPI_Abort (error code 75)",
        ),
        (  # from the rank left waiting, as soon as the departure message arrives
            "exit_early",
            "bnsgd_numba.distributed: rank 0 of 2: SyncBatchNorm.forward (agreement) cannot "
            "complete: rank 1 exited (end of its script or sys.exit) without joining it; "
            "calling MPI_Abort (error code 75)",
        ),
    ],
    ids=["raise_outside", "exit_early"],
)
def test_a_rank_that_is_gone_ends_the_job_at_once_naming_it(launch, tmp_path, mode, message):
    start = time.perf_counter()
    done, lines = _failure(launch, 2, mode, tmp_path)
    seconds = time.perf_counter() - start
    assert done.returncode == 75
    assert message in done.stderr
    assert seconds < 30  # the deadline is 60 s


def test_different_data_on_one_rank_fails_every_rank_at_startup(launch, tmp_path):
    done, lines = _failure(launch, 2, "different_data", tmp_path)
    assert done.returncode != 0
    for rank, line in enumerate(lines):
        assert line.startswith(f"RANK {rank} RankFailedValueError value_error=True"), line
        assert (
            "rank 1 of 2 failed in train_distributed (startup): ValueError: digest of the "
            "data and config differs across ranks"
        ) in line


def test_train_command_distributed_with_data_missing_on_one_rank(mpi, tmp_path):
    # MPMD: rank 0 gets a data file, rank 1 a path that does not exist
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install 'bnsgd-numba[mpi]' brings one)")
    x = np.random.default_rng(0).integers(0, 255, (30, 4)).astype(np.uint8)
    y = (x.sum(axis=1) % 3).astype(np.int64)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=x[:20], y_train=y[:20], x_test=x[20:], y_test=y[20:])
    train = [sys.executable, "-m", "bnsgd_numba", "train", "--distributed", "--epochs", "1",
             "--batch-size", "10", "--hidden", "4", "--quiet", "--data"]  # fmt: skip
    command = [mpiexec, "-n", "1", *train, str(data), ":", "-n", "1", *train, "missing.npz"]
    start = time.perf_counter()
    done = _run_limited(command, _mpi_environment(), cwd=tmp_path)
    seconds = time.perf_counter() - start
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "bnsgd-numba train: error: rank 1 of 2 failed in train --distributed (options and "
        "data): ValueError: --data: no such file: missing.npz"
    ]
    assert done.stdout == ""
    assert seconds < 30  # the deadline is 60 s


def test_train_command_distributed(launch, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (64, 4, 4)).astype(np.uint8)
    y = (x.reshape(64, -1).sum(axis=1) % 3).astype(np.int64)
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])
    summary = tmp_path / "summary.json"
    mpiexec = _mpiexec()
    command = [mpiexec, "-n", "2", sys.executable, "-m", "bnsgd_numba", "train", "--distributed",
               "--data", str(data), "--epochs", "2", "--batch-size", "10", "--hidden", "8",
               "--json", str(summary), "--quiet"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_LIMIT,
                          cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("test  |") == 1  # rank 0 alone prints the table
    assert done.stderr.count("on 2 rank(s)") == 1
    report = json.loads(summary.read_text())
    assert report["ranks"] == 2 and len(report["epochs"]) == 2
