#!/usr/bin/env bash
# Download, here, the wheels a GPU machine without network access lacks, into .whl/ (ignored by
# git), for scripts/gpu_check.sh to install there (copy .whl/ along with the checkout).
#
#   bash scripts/gpu_wheels.sh            # TRL, datasets, math-verify and their missing needs (~2.5 MB)
#                                         # + pyarrow/fsspec in .whl/optional (~55 MB), installed there
#                                         #   only if the machine's own versions are too old/new for datasets
#   bash scripts/gpu_wheels.sh --no-pyarrow   # skip the optional folder (if the 64 MiB per call is short)
#
# The versions are those of the project's .venv (the ones the test suite passes with); the
# target machine runs CPython 3.12 (GPU_PYTHON_VERSION to change) on x86_64 and already has torch, transformers, accelerate, peft,
# pytest, pandas, xxhash, huggingface-hub (as PyTorch GPU images usually do).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
ver() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || echo "$2"; }
REQUIRED=(
  "trl==$(ver trl 1.16.0)"
  "datasets==$(ver datasets 5.2.0)"
  "dill==$(ver dill 0.4.1)"
  "multiprocess==$(ver multiprocess 0.70.19)"
  "math-verify==$(ver math-verify 0.9.0)"
  "latex2sympy2_extended==$(ver latex2sympy2_extended 1.11.0)"
  "antlr4-python3-runtime==$(ver antlr4-python3-runtime 4.13.2)"
)
OPTIONAL=("pyarrow==$(ver pyarrow 26.0.1)" "fsspec==$(ver fsspec 2026.9.0)")
PLAT=(--only-binary=:all: --python-version "${GPU_PYTHON_VERSION:-3.12}" --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux1_x86_64)
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps "${PLAT[@]}" -d .whl "${REQUIRED[@]}"
if [ "${1:-}" != "--no-pyarrow" ]; then
  mkdir -p .whl/optional
  "$PY" -m pip download -q --no-deps "${PLAT[@]}" -d .whl/optional "${OPTIONAL[@]}"
fi
ls -la .whl .whl/optional 2>/dev/null || true
tree_mb=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
whl_mb=$(du -sb .whl | cut -f1)
total=$(( (tree_mb + whl_mb) / 1048576 ))
echo "wheels + tracked tree: ${total} MiB (keep it under 64 MiB where the copy to the GPU machine is capped)"
[ "$total" -lt 62 ] || echo "WARNING: close to or over 64 MiB: rerun with --no-pyarrow" >&2
