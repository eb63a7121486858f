"""BatchNorm benchmark on the CPU against PyTorch and NumPy. Same as ``bnsgd-numba bench``."""

import sys

from bnsgd_numba.bench.batch_norm import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
