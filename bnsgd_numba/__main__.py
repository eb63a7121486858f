"""``python -m bnsgd_numba``: the same as the ``bnsgd-numba`` command."""

import sys

from bnsgd_numba.cli import main

sys.exit(main())
