"""Serial against parallel builds by size: a value of config.CPU_SERIAL_BELOW for this machine."""

import sys

from bnsgd_numba.bench.serial_threshold import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
