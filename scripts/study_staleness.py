"""The staleness study as a script: ``python scripts/study_staleness.py [--quick] [--out DIR] ...``.

Same as ``adaclip-rl study staleness`` (see :mod:`adaclip_rl.study.staleness`): GRPO, DAPO
clip-higher, BAPO and Archer from one warm start at 1, 2, 4, 8 and 16 optimizer steps per
generation batch and with 50% replay; held-out avg@k, entropy, clip fractions, grad-norm spikes,
BAPO bounds; JSON, PNG and a markdown table. Resumable: finished runs are skipped.
"""

from __future__ import annotations

import sys

from adaclip_rl.study.staleness import main

if __name__ == "__main__":  # vLLM (replay level) starts engine processes with spawn
    sys.exit(main())
