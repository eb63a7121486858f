"""The GPU benchmark's report (bnsgd_numba.bench.gpu.format_report) reads as results for users."""

from __future__ import annotations

import re

from bnsgd_numba.bench import gpu


def _rows() -> list[gpu.Row]:
    return [
        gpu.Row("(8,4,5,5) NCHW", "forward-train", 2.0, 1.0, 10.0, 50.0, targeted=True),
        gpu.Row("(8,4,5,5) NCHW", "backward", 1.0, 3.0, 80.0, 75.0, targeted=True),
        gpu.Row("(8,4,5,5) NCHW", "backward, new dx", 2.0, 3.0, 40.0, 37.0, targeted=True),
        gpu.Row("3 tensors", "sgd-step (arena)", 1.0, None, 90.0, 90.0, targeted=True),
        gpu.Row("layer_norm (3,8)", "backward", 5.0, 1.0, 1.0, 1.0),
    ]


def test_the_report_says_what_is_measured_how_to_reproduce_it_and_on_what_machine():
    text = gpu.format_report(
        _rows(), 100e9, ["- device: Test GPU"], ["tests: 3 passed"], repeat=3, calls=5
    )
    headings = re.findall(r"^#+ .*$", text, re.M)
    assert headings[0].startswith("# GPU benchmark")
    assert headings[1:] == ["## Machine and versions", "## Results", "## Targets"]
    assert "best of 3 rounds of 5 back-to-back calls" in text
    assert "`bash benchmarks/gpu_check.sh`" in text
    assert "python -m bnsgd_numba.bench.gpu --output benchmarks/RESULTS-gpu.md" in text
    assert "- device: Test GPU" in text and "tests: 3 passed" in text
    assert "copy probe: 100 GB/s" in text
    assert not re.search(r"\bissues? \d|\bsession\b", text, re.I)


def test_the_targets_table_says_which_targets_are_met_and_which_are_missed():
    text = gpu.format_report(_rows(), 100e9, [], [])
    targets = text[text.index("## Targets") :]
    assert "| (8,4,5,5) NCHW, forward-train: at least as fast as PyTorch | 0.50x | **no** |" in (
        targets
    )
    assert "| (8,4,5,5) NCHW, forward-train: at least 70% of the copy probe | 50% | **no** |" in (
        targets
    )
    assert "| (8,4,5,5) NCHW, backward: at least as fast as PyTorch | 3.00x | yes |" in targets
    assert "| (8,4,5,5) NCHW, backward: at least 70% of the copy probe | 75% | yes |" in targets
    assert "sgd-step (arena): at least as fast as torch fused=True | n/a | not measured |" in (
        targets
    )
    # Allocating rows and the variants are reported, not held to the targets.
    assert "new dx" not in targets and "layer_norm" not in targets
    assert "layer_norm (3,8) | backward | 5.000 | 1.000 | 0.20 |" in text
