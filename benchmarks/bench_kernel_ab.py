"""Before-and-after benchmark of the BatchNorm CPU kernels: a git revision against the working tree."""

import sys

from bnsgd_numba.bench.kernel_ab import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
