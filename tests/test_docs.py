"""The examples in docs/ run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def test_the_plugin_guides_hypothesis_example_passes_in_a_fresh_process():
    # A fresh process with Hypothesis' default settings (200 ms deadline), as a
    # plugin author's test run has: the first example loads the kernels.
    (block,) = [b for b in _python_blocks(ROOT / "docs" / "plugins.md") if "@given" in b]
    code = block.replace('"my_norm"', '"batch_norm"') + "\ntest_my_norm_standardizes()\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_docs_link_only_to_files_inside_the_repository():
    pattern = re.compile(r"\]\(([^)#]+)\)")
    broken = []
    for path in [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        *sorted((ROOT / "docs").glob("*.md")),
    ]:
        for target in pattern.findall(path.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            resolved = (path.parent / target).resolve()
            if not resolved.exists() or ROOT not in resolved.parents and resolved != ROOT:
                broken.append(f"{path.name}: {target}")
    assert broken == []


def test_the_plugin_guides_scheduler_example_runs_and_keeps_the_contract():
    (block,) = [b for b in _python_blocks(ROOT / "docs" / "plugins.md") if "class InverseSqrt" in b]
    namespace: dict = {}
    exec(block, namespace)
    import bnsgd_numba as bn

    optimizer = bn.SGD(bn.ParameterArena([(3,)]), lr=0.5)
    scheduler = namespace["InverseSqrt"](warmup_steps=10).bind(optimizer)
    rates = [scheduler.step() for _ in range(20)]
    assert rates[9] == 0.5 and optimizer.lr == rates[-1] == scheduler.get_last_lr()[0]
