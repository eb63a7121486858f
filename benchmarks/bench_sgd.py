"""SGD benchmark on the CPU: the arena step vs torch.optim.SGD."""

import sys

from bnsgd_numba.bench.sgd import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
