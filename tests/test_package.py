"""Package-level promises: lazy import, cache fallback, conventions, CI wiring."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bnsgd_numba"


def test_import_compiles_nothing_and_does_not_import_numba():
    code = (
        "import sys, bnsgd_numba;"
        "heavy = [m for m in ('numba', 'pluggy', 'torch') if m in sys.modules];"
        "print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_every_public_name_resolves():
    import bnsgd_numba

    for name in bnsgd_numba.__all__:
        assert getattr(bnsgd_numba, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'batchnorm_forward'"):
        bnsgd_numba.batchnorm_forward  # noqa: B018


def test_kernels_run_uncached_when_no_cache_directory_is_writable(tmp_path):
    # Numba raises "cannot cache function ...: no locator available" at
    # decoration when none of its cache locators finds a writable directory
    # (read-only site-packages, no NUMBA_CACHE_DIR); as root every directory
    # is writable, so the locators are removed to get numba's own error.
    copy = tmp_path / "site"
    shutil.copytree(PACKAGE, copy / "bnsgd_numba", ignore=shutil.ignore_patterns("__pycache__"))
    code = (
        "import numpy as np, numba.core.caching as c;"
        "(getattr(c, 'CacheImpl', None) or c._CacheImpl)._locator_classes = [];"
        "import bnsgd_numba as bn;"
        "x = np.arange(12.0).reshape(4, 3);"
        "print(bn.batch_norm_forward(x, training=True).y.sum().round(6))"
    )
    env = {"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("0.0", "-0.0")


def test_no_kernel_hard_codes_fastmath_flags():
    offenders = [
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).as_posix()
        not in {"config.py", "_core/compile.py", "_core/cuda.py"}
        and re.search(r"fastmath\s*=\s*(True|\{|\[)", path.read_text())
    ]
    assert offenders == []


def test_cuda_is_imported_in_one_module_only():
    pattern = re.compile(
        r"^\s*(from numba import cuda|import numba\.cuda|from numba\.cuda|import numba_cuda|from numba_cuda)",
        re.M,
    )
    offenders = [
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if path.relative_to(PACKAGE).as_posix() != "_core/cuda.py"
        and pattern.search(path.read_text())
    ]
    assert offenders == []


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
    assert len(commands) >= 2, "the README opens with the main-job and the test commands"
    test_command = commands[1].strip()
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci_script


def test_ruff_is_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_python_examples_run():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        if "def test_" in block:  # the conformance-kit example is a test, not a script
            continue
        exec(compile(block, "README.md", "exec"), namespace)
