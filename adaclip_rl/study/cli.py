"""``adaclip-rl study <name> [options]``: the studies (today: ``staleness``)."""

from __future__ import annotations

import importlib
import sys

STUDIES = {"staleness": ("adaclip_rl.study.staleness", "GRPO / DAPO / BAPO / Archer against stale data.")}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STUDIES:
        lines = ["usage: adaclip-rl study <name> [options]", "", "studies:"]
        lines += [f"  {n:<10} {h}" for n, (_, h) in STUDIES.items()]
        bad = bool(argv) and argv[0] not in ("-h", "--help")
        print(("adaclip-rl study: unknown study " + repr(argv[0]) + "\n\n" if bad else "") + "\n".join(lines),
              file=sys.stderr if bad else sys.stdout)
        return 2 if bad else 0
    return int(importlib.import_module(STUDIES[argv[0]][0]).main(argv[1:]) or 0)
