"""Mixed-loop benchmark: NumPy's BLAS and the kernels' thread pools in one loop, default vs single-threaded BLAS."""

import sys

from bnsgd_numba.bench.mixed_loop import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
