"""Run by ``accelerate launch`` with TRL's ``zero2.yaml``: what the trainer's ``TrainingArguments``
(``use_cpu``, ``ddp_backend``) give under DeepSpeed on a machine without a GPU, and whether
``accelerator.prepare`` builds the DeepSpeed engine (one JSON per rank)."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from accelerate import Accelerator
from transformers import TrainingArguments

out, use_cpu, backend = sys.argv[1], sys.argv[2] == "1", sys.argv[3] or None
torch.set_num_threads(1)
args = TrainingArguments(output_dir=os.path.dirname(out), use_cpu=use_cpu, per_device_train_batch_size=4,
                         ddp_backend=backend, report_to=[])
acc = Accelerator(cpu=use_cpu)  # shares the state TrainingArguments set up, as the Trainer's does
info = {"args_world_size": args.world_size, "distributed_type": str(acc.distributed_type),
        "num_processes": acc.num_processes, "torch_world_size": dist.get_world_size() if dist.is_initialized() else None,
        "deepspeed_plugin": acc.state.deepspeed_plugin is not None}
model = torch.nn.Linear(4, 4)
loader = torch.utils.data.DataLoader(torch.randn(16, 4), batch_size=4)
try:
    prepared = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1), loader)
    info["prepared"] = type(prepared[0]).__name__
except Exception as exc:  # noqa: BLE001 - the refusal is the result
    info["error"] = f"{type(exc).__name__}: {exc}"
with open(f"{out}.{os.environ['RANK']}", "w") as f:  # accelerate may count one process
    json.dump(info, f)
