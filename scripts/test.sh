#!/usr/bin/env bash
# The README's test command: set up .venv on a fresh machine if needed, then run the whole suite
# (what CI runs: .ci/run). `bash scripts/test.sh --fast` runs the fast tier instead (tests/fast_tier.py:
# the tests to run on every change, about a minute and a half on 2 cores). Other arguments go to pytest.
# Both print the 15 slowest tests (--durations=15).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
.venv/bin/python -m ruff check adaclip_rl tests scripts
exec .venv/bin/python -m pytest tests --durations=15 "$@"
