"""The example plugin, installed with pip, is found through its entry point in a fresh process.

The plugin is built offline (``--no-build-isolation --no-deps --no-index``)
from a copy of its source, so the build leaves nothing in the repository,
and installed with ``--target`` into a temporary directory that only the
child processes see (through ``PYTHONPATH``): this process never imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN_SOURCE = Path(__file__).parents[1] / "plugins" / "bnsgd-numba-inverse-sqrt"

PROBE = textwrap.dedent(
    """
    import json, sys
    import bnsgd_numba
    imported_early = "bnsgd_numba_inverse_sqrt" in sys.modules
    names = bnsgd_numba.available_schedulers()
    info = [vars(p) for p in bnsgd_numba.list_plugins() if p.name == "inverse_sqrt"]
    sched = bnsgd_numba.create_scheduler("inverse_sqrt", base_lr=1.0, warmup_steps=4)
    print(json.dumps({
        "imported_early": imported_early,
        "has_name": "inverse_sqrt" in names,
        "info": info,
        "module": type(sched).__module__,
        "rates": [sched.step() for _ in range(5)],
    }))
    """
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """Install the plugin into a fresh target directory; return the child environment."""
    work = tmp_path_factory.mktemp("plugin")
    source, target = work / "src", work / "site"
    shutil.copytree(PLUGIN_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
            "--no-build-isolation", "--no-index", "--target", str(target), str(source),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH")]))
    env.pop("BNSGD_NUMBA_BLOCK_PLUGINS", None)
    return env


def _probe(env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


def test_installed_plugin_is_discovered_through_its_entry_point(installed):
    assert "bnsgd_numba_inverse_sqrt" not in sys.modules
    result = _probe(installed)
    assert result["imported_early"] is False  # loaded lazily, on first use
    assert result["has_name"]
    (info,) = result["info"]
    assert info["origin"] == "bnsgd-numba-inverse-sqrt 0.1.0"
    assert info["registered"] == {"scheduler": ["inverse_sqrt"]}
    assert info["error"] is None
    assert result["module"] == "bnsgd_numba_inverse_sqrt"
    assert result["rates"] == [0.25, 0.5, 0.75, 1.0, pytest.approx(0.8**0.5)]


def test_installed_plugin_can_be_blocked(installed):
    env = dict(installed, BNSGD_NUMBA_BLOCK_PLUGINS="inverse_sqrt")
    code = "import bnsgd_numba\nprint('inverse_sqrt' in bnsgd_numba.available_schedulers())\n"
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    assert out.stdout.strip() == b"False"


def test_plugins_command_lists_the_installed_plugin(installed):
    out = subprocess.run(
        [sys.executable, "-m", "bnsgd_numba", "plugins"],
        env=installed,
        check=True,
        capture_output=True,
        text=True,
    )
    assert "inverse_sqrt" in out.stdout
    assert "bnsgd-numba-inverse-sqrt 0.1.0" in out.stdout


def test_example_plugin_own_tests_pass_against_the_installed_plugin(installed):
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PLUGIN_SOURCE)],
        env=installed,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert " passed" in out.stdout
