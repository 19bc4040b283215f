#!/usr/bin/env bash
# The GPU check, one command (README "GPU check"): install the carried wheels if any, then run
# scripts/gpu_check.py (loss/gradclip/trainer tests on CUDA in fp32 and bf16, bf16 vs fp32,
# determinism, torch.compile, host syncs, benchmarks at real sizes) and write
# results/gpu/gpu_check.json (also copied to $OUT when set). Extra arguments go to gpu_check.py.
# Without CUDA it says so and exits 0, running nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  exec "$PY" scripts/gpu_check.py "$@"   # prints that it needs a GPU and exits 0 (or runs --device cpu)
fi
site=${GPU_CHECK_SITE:-/tmp/adaclip-site}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { echo "gpu_check: installing .whl/*.whl failed" >&2; exit 1; }
  # pyarrow/fsspec only where the machine's own versions do not satisfy the carried datasets
  if compgen -G ".whl/optional/*.whl" >/dev/null && ! PYTHONPATH="$site" "$PY" - <<'PYEOF'
import importlib.metadata as m, sys
from packaging.requirements import Requirement
need = [Requirement(r) for r in m.requires("datasets") or [] if "extra" not in r]
bad = []
for r in need:
    if r.name in ("pyarrow", "fsspec"):
        try:
            v = m.version(r.name)
        except m.PackageNotFoundError:
            v = None
        if v is None or v not in r.specifier:
            bad.append(f"{r.name} {v} (datasets wants {r.specifier})")
print("gpu_check: carried pyarrow/fsspec needed:", bad or "no")
sys.exit(1 if bad else 0)
PYEOF
  then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      .whl/optional/*.whl || { echo "gpu_check: installing .whl/optional failed" >&2; exit 1; }
  fi
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
log=results/gpu/gpu_check.log
mkdir -p results/gpu
"$PY" scripts/gpu_check.py "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
[ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] && cp "$log" "$OUT/" 2>/dev/null
exit "$rc"
