"""Command line: ``adaclip-rl train | eval | demo | study``.

Each subcommand lives in its own module and receives the remaining arguments, so heavy imports
(trl, vllm) happen only for the command that needs them. ``python -m adaclip_rl.cli train ...``
works under ``accelerate launch``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("adaclip_rl.trainers.cli", "Train with a YAML recipe (AdaClipGRPOTrainer)."),
    "eval": ("adaclip_rl.eval.cli", "Evaluate a model on math/code benchmarks (avg@k, pass@k)."),
    "demo": ("adaclip_rl.demo", "CPU demo: GRPO vs BAPO vs Archer on a tiny model."),
    "study": ("adaclip_rl.study.cli", "Studies on a tiny model: `study staleness` (clipping vs stale data)."),
}


def _usage() -> str:
    lines = ["usage: adaclip-rl <command> [options]", "", "commands:"]
    lines += [f"  {name:<6} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"adaclip-rl: unknown command {cmd!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
