"""The optimizers are pure PyTorch: importing them pulls in neither TRL nor transformers."""

from __future__ import annotations

import subprocess
import sys


def test_optim_import_leaves_trl_and_transformers_out():
    code = (
        "import sys, adaclip_rl.optim, adaclip_rl.optim.registry\n"
        "bad = [m for m in ('trl', 'transformers', 'accelerate', 'vllm') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing adaclip_rl.optim pulled in: {out.stdout.strip()}"
