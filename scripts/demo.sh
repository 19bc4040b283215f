#!/usr/bin/env bash
# The README's main command: set up .venv on a fresh machine if needed, then run the CPU demo
# (tiny model, scratchpad-addition warm start, on-policy GRPO vs GRPO / BAPO / Archer on stale data
# (16 optimizer steps per generation batch), 3 seeds, held-out evaluation, results table, plot).
# Extra arguments go to `adaclip-rl demo` (e.g. --seeds 0,1,2 --level s8).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/adaclip-rl demo --out runs/demo "$@"
