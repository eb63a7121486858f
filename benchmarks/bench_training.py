"""Training benchmark: the seed's network on MNIST, bnsgd_numba vs PyTorch eager."""

import sys

from bnsgd_numba.bench.training import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
