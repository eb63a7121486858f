"""Compile every CUDA kernel to PTX for sm_90, without a GPU and without the simulator.

The simulator runs the kernels as Python, so it cannot catch what only the
real compiler rejects (an unsupported call, a type that does not unify).
This script types and lowers each kernel for float32 and float64 through
NVVM, as a real GPU would, and checks the PTX: warp shuffles where the
kernels reduce, and no atomics. Needs NVVM and NVRTC (``pip install
nvidia-nvvm nvidia-cuda-nvrtc``); exits 77 when they are missing.

    python tests/gpu/ptx_check.py
"""

from __future__ import annotations

import os
import re
import sys
import types

os.environ["NUMBA_ENABLE_CUDASIM"] = "0"

from numba import types as nt  # noqa: E402

from bnsgd_numba._core import cuda as backend  # noqa: E402

CC = (9, 0)
MISSING = 77
ATOMIC = re.compile(r"^\s*(@%p\d+\s+)?(atom|red)\.", re.M)


def _signatures(dt):
    f64, i32, i64, b1 = nt.float64, nt.int32, nt.int64, nt.boolean

    def c(dtype, ndim=1):
        return nt.Array(dtype, ndim, "C")

    def a(dtype, ndim=1):
        return nt.Array(dtype, ndim, "A")

    from bnsgd_numba.batch_norm import _cuda as bn
    from bnsgd_numba.sgd import _cuda as sgd

    return [
        (bn.moments_ncs, (c(dt), i64, i64, i64, c(f64, 3)), True),
        (bn.moments_rc, (c(dt), i64, i64, c(f64, 3)), False),
        (
            bn.finish_moments,
            (c(f64, 3), f64, c(dt), c(dt), b1, b1, c(f64, 2), c(dt, 2), c(dt, 2), c(i32)),
            True,
        ),
        (
            bn.finish_running,
            (c(i32), f64, f64, b1, b1, c(f64, 2), c(dt), c(dt), f64, c(i32)),
            False,
        ),
        (bn.eval_constants, (c(dt), c(dt), f64, c(dt), c(dt), b1, b1, c(dt, 2), c(dt, 2)), False),
        (bn.normalize, (c(dt), c(dt), *(i64,) * 4, c(dt, 2), c(i32)), False),
        (bn.normalize_planes, (c(dt), c(dt), i64, i64, c(dt, 2), c(i32)), False),
        (bn.normalize_columns, (c(dt), c(dt), i64, c(dt, 2), c(i32)), False),
        (bn.input_gradient, (*(c(dt),) * 3, *(i64,) * 4, c(dt), c(dt, 2)), False),
        (bn.input_gradient_planes, (*(c(dt),) * 3, i64, i64, c(dt), c(dt, 2)), False),
        (bn.input_gradient_columns, (*(c(dt),) * 3, i64, c(dt), c(dt, 2)), False),
        (bn.gradient_sums_ncs, (c(dt), c(dt), i64, i64, c(dt), i64, c(f64, 3)), True),
        (bn.gradient_sums_rc, (c(dt), c(dt), i64, c(dt), i64, c(f64, 3)), False),
        (
            bn.finish_gradient_sums,
            (c(f64, 3), f64, b1, c(dt), b1, c(dt), c(dt, 2), c(dt, 2)),
            True,
        ),
        (sgd.sgd_update, (c(dt), c(dt), c(dt), *(dt,) * 6, i64, b1, b1, b1), False),
        (sgd.flag_nonfinite, (c(dt), c(i32)), False),
        (sgd.norm_partials, (c(dt), i64, f64, c(f64)), True),
        (sgd.scale, (c(dt), dt), False),
        (sgd.clamp, (c(dt), dt, dt), False),
        (sgd.fill, (c(dt), dt), False),
        *_normalization_signatures(dt),
    ]


def _normalization_signatures(dt):
    f64, i64 = nt.float64, nt.int64

    def c(dtype, ndim=1):
        return nt.Array(dtype, ndim, "C")

    from bnsgd_numba.normalizations import _cuda as norm

    rows, work, vector = c(dt, 2), c(f64), c(dt)
    return [
        (norm.rows_forward, (rows, rows, vector, vector, work, f64, i64), True),
        (norm.rows_column_partials, (rows, rows, work), False),
        (norm.rows_backward, (rows, rows, rows, vector, work, vector, vector, i64), True),
        (norm.group_partials, (rows, work, i64), True),
        (norm.group_forward, (rows, rows, vector, vector, work, i64, i64, i64, f64, i64), True),
        (norm.group_channel_sums, (rows, rows, work, i64, i64), True),
        (
            norm.group_backward,
            (rows, rows, rows, vector, work, vector, vector, i64, i64, i64, i64),
            True,
        ),
        (norm.channel_moments, (c(dt, 3), c(f64), c(f64)), True),
        (norm.channel_normalize, (c(dt, 3), c(dt, 3), *(c(dt),) * 4), False),
    ]


def main() -> int:
    """Compile every kernel; print one line each; 0 when all pass, 77 without NVVM."""
    if backend.cuda is None or backend.SIMULATOR:
        print("numba-cuda is missing or the simulator is on")
        return MISSING
    import numba.cuda.dispatcher as dispatcher

    # Device functions compile for the current device; there is none here.
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=CC)
    failures = 0
    for dt in (nt.float32, nt.float64):
        for kernel, signature, reduces in _signatures(dt):
            name = f"{kernel.py_func.__name__}[{dt}]"
            try:
                ptx, _ = backend.cuda.compile_ptx(kernel.py_func, signature, cc=CC)
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}"
                if "DynamicLibNotFound" in text or "libnvvm" in text or "libnvrtc" in text:
                    print(f"NVVM/NVRTC not found ({text.splitlines()[0]})")
                    return MISSING
                print(f"FAIL {name}: {text}")
                failures += 1
                continue
            problems = []
            if ATOMIC.search(ptx):
                problems.append("uses atomics")
            if reduces and "shfl.sync" not in ptx:
                problems.append("no warp shuffle")
            print(f"{'FAIL' if problems else 'ok  '} {name} {' '.join(problems)}")
            failures += bool(problems)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
