"""The thread pool: small work stays serial, and fork and Python threads are safe.

Each scenario runs in a fresh interpreter (the threading layer is chosen once
per process), under a timeout so that a hang fails instead of blocking, with
NumPy's BLAS working in the same process (and PyTorch imported first, under
each threading layer), as users have them.
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


LAYERS = [
    "default",
    "omp",
    "workqueue",
    pytest.param(
        "tbb",
        marks=pytest.mark.skipif(
            not _installed("tbb") and not os.environ.get("CONDA_PREFIX"),
            reason="oneTBB (pip install tbb) is not installed",
        ),
    ),
]

PRELUDE = """
import os, sys, threading, multiprocessing
import numpy as np
import numba
import bnsgd_numba as bn

rng = np.random.default_rng(0)
a = rng.standard_normal((32, 784)).astype(np.float32)
w = rng.standard_normal((784, 64)).astype(np.float32)
x = (3 + rng.standard_normal((64, 16, 256))).astype(np.float32)  # above the crossover


PARENT = os.getpid()


def work(_=None):
    h = a @ w  # NumPy's BLAS threads in the same process
    if "torch" in sys.modules and os.getpid() == PARENT:
        # and PyTorch's (GNU OpenMP), in the parent only: PyTorch's own
        # parallel regions hang in a forked child (its DataLoader workers
        # run with torch.set_num_threads(1) for that reason)
        torch.from_numpy(a) @ torch.from_numpy(w)
    out = bn.batch_norm_forward(x, training=True)
    grads = bn.batch_norm_backward(x, x, None, out.save_mean, out.save_invstd)
    return np.concatenate([out.y.ravel(), grads.dx.ravel(), grads.dweight, h.ravel()[:1]])
"""

REFERENCE = """
reference = work()
reference_y = bn.batch_norm_forward(x, training=True).y
assert numba.threading_layer(), "the big call ran on the pool"
"""


def _run(
    body: str,
    layer: str = "default",
    env: dict[str, str] | None = None,
    prelude: str = REFERENCE,
    with_torch: bool = False,
) -> str:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), environment.get("PYTHONPATH", "")])
    environment.pop("NUMBA_THREADING_LAYER", None)
    if layer != "default":
        environment["NUMBA_THREADING_LAYER"] = layer
    environment.update(env or {})
    # torch first, as user code imports it: its OpenMP runtime is loaded before numba's
    source = "import torch\n" if with_torch else ""
    source += textwrap.dedent(PRELUDE) + textwrap.dedent(prelude) + textwrap.dedent(body)
    return _python(source, environment)


def _python(source: str, environment: dict[str, str]) -> str:
    # in its own session: a hung forked child is killed with its parent
    process = subprocess.Popen(
        [sys.executable, "-c", source],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"hung for {TIMEOUT} s; output so far:\n{stdout}\n{stderr}")
    assert process.returncode == 0, f"exit {process.returncode}\n{stdout}\n{stderr}"
    return stdout


@pytest.mark.parametrize("layer", LAYERS)
def test_fork_and_python_threads_are_safe(layer):
    out = _run(
        """
        # fork after a parallel call: the child (and its child) computes the same
        pid = os.fork()
        if pid == 0:
            same = np.array_equal(work(), reference)
            pid2 = os.fork()
            if pid2 == 0:
                os._exit(0 if np.array_equal(work(), reference) else 3)
            os._exit(0 if same and os.waitpid(pid2, 0)[1] == 0 else 4)
        status = os.waitpid(pid, 0)[1]
        assert status == 0, f"forked child: exit status {status}"
        assert np.array_equal(work(), reference), "the parent's pool still works"

        # a fork-based worker pool returns
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map(work, range(4))
        assert all(np.array_equal(r, reference) for r in results), "fork pool"

        # concurrent calls from Python threads
        failures = []

        def run():
            for _ in range(3):
                if not np.array_equal(work(), reference):
                    failures.append(1)
            for _ in range(25):  # the kernels alone, often inside each other's regions
                if not np.array_equal(bn.batch_norm_forward(x, training=True).y, reference_y):
                    failures.append(1)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, "threads"

        # fork from another thread than the one that started the pool
        statuses = []

        def fork_and_wait():
            pid = os.fork()
            if pid == 0:
                os._exit(0 if np.array_equal(work(), reference) else 3)
            statuses.append(os.waitpid(pid, 0)[1])

        thread = threading.Thread(target=fork_and_wait)
        thread.start()
        thread.join()
        assert statuses == [0], f"fork from a thread: {statuses}"
        print("ok", numba.threading_layer())
        """,
        layer,
        with_torch=True,
    )
    assert out.startswith("ok" if layer == "default" else f"ok {layer}")


def test_fork_after_a_tiny_call_works_in_the_child():
    # the parent only loaded the kernels; the child's call is big enough for the pool
    out = _run(
        """
        small = rng.standard_normal((8, 4)).astype(np.float32)
        bn.batch_norm_forward(small, training=True)
        pid = os.fork()
        if pid == 0:
            print("child", hash(work().tobytes()), flush=True)
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        print("parent", hash(work().tobytes()))
        """,
        prelude="",
    )
    child, parent = out.split()[1], out.split()[3]
    assert child == parent


def test_small_work_never_starts_the_pool():
    script = """
        import numpy as np
        import numba
        import bnsgd_numba as bn
        from bnsgd_numba.normalizations.layer_norm import LayerNorm
        from bnsgd_numba.registry import create_normalization

        rng = np.random.default_rng(0)
        for shape in [(32, 784), (32, 64), (32, 16, 8)]:
            x = rng.standard_normal(shape).astype(np.float32)
            c = shape[1]
            rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
            out = bn.batch_norm_forward(x, None, None, rm, rv, training=True)
            bn.batch_norm_forward(x, None, None, rm, rv, training=False)
            bn.batch_norm_backward(x, x, None, out.save_mean, out.save_invstd)
            layer = bn.BatchNorm(c)
            layer.backward(layer.forward(x))
        arena = bn.ParameterArena([(784, 64), (64,), (64, 10), (10,)])  # the seed: 50,890
        arena.flat_grads[...] = 1e-3
        optimizer = bn.SGD(arena, lr=0.1, momentum=0.9, weight_decay=1e-4)
        for _ in range(3):
            bn.clip_grad_norm(arena, 1.0)
            bn.clip_grad_value(arena, 1.0)
            optimizer.step(skip_if_nonfinite=True)
        x = rng.standard_normal((32, 64)).astype(np.float32)
        norm = LayerNorm(64)
        norm.backward(norm.forward(x))
        for name, args in (("group_norm", (8, 64)), ("batch_renorm", (64,))):
            norm = create_normalization(name, *args)
            norm.backward(norm.forward(x))
        try:
            numba.threading_layer()
        except ValueError:
            print("not started")
        """
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), environment.get("PYTHONPATH", "")])
    assert _python(textwrap.dedent(script), environment).strip() == "not started"


def test_without_tbb_the_fallback_warns_and_stays_fork_safe():
    # oneTBB failed to load (as the library reports it) and numba takes OpenMP
    out = _run(
        """
        import warnings
        from bnsgd_numba._core import threads

        threads._state["tbb"] = "libtbb.so.12 not found (the test)"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reference = work()
        assert [w.category.__name__ for w in caught] == ["ThreadingLayerWarning"], caught
        assert "not found (the test)" in str(caught[0].message)
        assert "OMP_WAIT_POLICY" not in os.environ, "the spin policy does not leak"
        pid = os.fork()
        if pid == 0:
            os._exit(0 if np.array_equal(work(), reference) else 3)
        assert os.waitpid(pid, 0)[1] == 0
        print("ok", threads.describe()["layer"])
        """,
        env={"NUMBA_THREADING_LAYER_PRIORITY": "omp workqueue tbb"},
        prelude="",
    )
    assert out.startswith("ok omp")
