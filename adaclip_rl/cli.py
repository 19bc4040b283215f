"""Command line: ``adaclip-rl train | eval | demo | study | plot``.

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
    "plot": ("adaclip_rl.plot", "Plot runs' metrics.jsonl: `plot RUN_DIR [RUN_DIR ...]` -> PNG."),
}


def _usage() -> str:
    lines = ["usage: adaclip-rl <command> [options]   (adaclip-rl --version)", "", "commands:"]
    lines += [f"  {name:<6} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"adaclip-rl {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(cmd, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"adaclip-rl: error: unknown command {cmd!r}{hint}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    from .console import quiet_progress_bars_in_logs

    quiet_progress_bars_in_logs()  # a log file gets plain lines, not progress-bar frames
    if cmd in ("demo", "study"):  # they build Trainers at once (transformers imports DeepSpeed); train: after its checks
        from .console import deepspeed_logs_to_stderr

        deepspeed_logs_to_stderr()
    module = importlib.import_module(COMMANDS[cmd][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
