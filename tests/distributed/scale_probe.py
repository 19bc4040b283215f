"""Run by ``accelerate launch``: write what accelerate made of the launch config (one JSON per rank)."""

from __future__ import annotations

import json
import os
import sys

import accelerate
from accelerate import Accelerator

acc = Accelerator(cpu=True)  # what the trainer does with use_cpu: true
state = acc.state
with open(f"{sys.argv[1]}.{acc.process_index}.{os.getpid()}", "w") as f:
    json.dump({"accelerate": accelerate.__version__, "distributed_type": str(state.distributed_type),
               "num_processes": acc.num_processes, "process_index": acc.process_index,
               "fsdp_plugin": getattr(state, "fsdp_plugin", None) is not None}, f)
