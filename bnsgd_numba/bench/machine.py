"""What a benchmark report records about the machine: CPU, cores, threads, versions."""

from __future__ import annotations

import os
import platform

import numpy as np


def machine_description() -> dict[str, str]:
    """CPU model, cores, threads and library versions."""
    import numba

    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {
        "python": platform.python_version(),
        "numba": numba.__version__,
        "numpy": np.__version__,
    }
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:
        versions["torch"] = "not installed"

    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "threads": str(numba.get_num_threads()),
        "threading_layer": _threading_layer(),
        **versions,
    }


def _threading_layer() -> str:
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        return "not started"
