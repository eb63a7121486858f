"""Distributed benchmark: allreduce+step vs local step, SyncBatchNorm over 1, 2, 4 processes.

Needs the ``mpi`` extra (``pip install 'bnsgd-numba[mpi]'``); launches ``mpiexec``
itself. The code is ``bnsgd_numba/bench/distributed.py``.
"""

import sys

from bnsgd_numba.bench.distributed import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
