"""The loss core must be readable and importable without TRL or transformers."""

from __future__ import annotations

import subprocess
import sys


def test_losses_import_leaves_trl_and_transformers_out():
    code = (
        "import sys, adaclip_rl.losses, adaclip_rl.losses.registry\n"
        "bad = [m for m in ('trl', 'transformers', 'vllm') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing adaclip_rl.losses pulled in: {out.stdout.strip()}"
