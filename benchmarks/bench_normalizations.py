"""Normalization-variant benchmark: layer_norm, group_norm, rms_norm vs PyTorch."""

import sys

from bnsgd_numba.bench.normalizations import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
