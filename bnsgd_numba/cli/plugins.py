"""``bnsgd-numba plugins``: every plugin, where it came from, what it registered, what failed."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

KIND_LABELS = {"scheduler": "schedulers", "normalization": "normalizations"}


def add_parser(subparsers: Any) -> None:
    """Add the ``plugins`` subcommand."""
    parser = subparsers.add_parser(
        "plugins",
        help="list plugins, their origin and registrations, and failures",
        description=(
            "List every bnsgd_numba plugin: built-in, installed through the 'bnsgd_numba' "
            "entry-point group (with distribution and version), or blocked with "
            "BNSGD_NUMBA_BLOCK_PLUGINS; what each registered; and any that failed."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 if a plugin failed or names clash"
    )
    parser.set_defaults(handler=run)


def _registered(info: Any) -> str:
    parts = [f"{KIND_LABELS.get(k, k)}: {', '.join(v)}" for k, v in info.registered.items() if v]
    return "; ".join(parts) or "-"


def run(args: argparse.Namespace) -> int:
    """Print the plugin table (or JSON); return 1 under ``--strict`` if anything failed."""
    from bnsgd_numba.registry import list_plugins, name_conflicts

    plugins = list_plugins()
    conflicts = name_conflicts()
    failed = [p for p in plugins if p.error]
    if args.json:
        payload = {
            "plugins": [asdict(p) for p in plugins],
            "conflicts": [
                {"kind": kind, "name": name, "plugins": owners}
                for (kind, name), owners in conflicts.items()
            ],
        }
        print(json.dumps(payload, indent=2))
    else:
        rows = [("PLUGIN", "ORIGIN", "REGISTERED")]
        for p in plugins:
            status = "blocked" if p.blocked else _registered(p)
            rows.append((p.name, p.origin, status))
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        for name, origin, status in rows:
            print(f"{name:<{widths[0]}}  {origin:<{widths[1]}}  {status}")
        if failed:
            print("\nFailed plugins (left out; the others work):")
            for p in failed:
                print(f"  {p.name}: {p.error}")
        if conflicts:
            print("\nName conflicts (the name is unusable until all but one plugin is blocked):")
            for (kind, name), owners in conflicts.items():
                print(f"  {kind} {name!r}: {', '.join(owners)}")
    if args.strict and (failed or conflicts):
        print("plugins: failures or conflicts found", file=sys.stderr)
        return 1
    return 0
