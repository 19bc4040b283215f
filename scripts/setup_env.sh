#!/usr/bin/env bash
# Create (if missing) and fill the project's virtual environment in .venv.
# Idempotent: a stamp keyed on pyproject.toml skips the install when nothing changed.
# torch is pinned to the local CPU build (2.13.0) first, so no multi-GB CUDA wheel is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${ADACLIP_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.adaclip-installed"
want=$(sha256sum pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/pip" install -q "torch==2.13.0"
  extras="dev"
  [ "$(uname -m)" = "x86_64" ] && extras="vllm,dev"
  "$VENV/bin/pip" install -q -e ".[${extras}]"
  # PyPI's torchvision/torchaudio/torchcodec break beside the local torch build (ENVIRONMENT.md).
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  echo "$want" > "$stamp"
fi
