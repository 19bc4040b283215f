"""The single-process reference of scale_fsdp_worker.py and the "distributed equals one process"
checks, shared by the FSDP (torchrun) and two-node (accelerate launch) tests; tolerances are
justified in test_scale_fsdp.py's docstring."""

from __future__ import annotations

from pathlib import Path

import pytest
import scale_fsdp_worker as w
import torch

PARAM_ATOL = 1e-6
NORM_REL = 1e-5


def single_process(tiny_model_dir: str, tmp_path: Path) -> tuple[Path, dict]:
    """Save the 8-sequence batch; run every case in this process on all of it (1 thread, as the workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = w.make_trainer(tiny_model_dir, str(tmp_path / "batch"), "grpo", "zclip", per_device=4)
        full = w.make_batch(first.model)
        batch_path = tmp_path / "batch.pt"
        torch.save(full, batch_path)
        single = {}
        for loss, clip in w.CASES:
            trainer = w.make_trainer(tiny_model_dir, str(tmp_path / f"single-{loss}-{clip}"), loss, clip, per_device=4)
            initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
            single[f"{loss}-{clip}"] = (w.run(trainer, full, 0, 1), initial)
    finally:
        torch.set_num_threads(threads)
    return batch_path, single


def assert_equal_to_single_process(single: dict, distributed: dict) -> None:
    assert set(distributed) == set(single)
    for case, (ref, initial) in single.items():
        got = distributed[case]
        rank0, rank1 = got["all_ranks"]
        assert rank0 == rank1, case  # bounds, norms, clipper metrics and state: identical on both ranks
        clipped = 0
        for k, (s_ref, s_got) in enumerate(zip(ref["steps"], got["steps"], strict=True)):
            assert s_got["bounds"] == s_ref["bounds"], (case, k)  # exactly
            if case.startswith("bapo"):
                assert len(s_got["bounds"]) == 2 and s_got["bounds"][0] == s_got["bounds"][1]  # one search per update
            assert s_got["norm"] == pytest.approx(s_ref["norm"], rel=NORM_REL), (case, k)
            assert s_got["clip"]["clipped"] == s_ref["clip"]["clipped"], (case, k)
            clipped += s_got["clip"]["clipped"]
        assert clipped >= 1, case  # the clipper acted
        moved = max((ref["params"][n] - initial[n]).abs().max().item() for n in initial)
        assert moved > 1e-3, case
        assert ref["params"].keys() == got["params"].keys()
        for name, p in ref["params"].items():
            torch.testing.assert_close(got["params"][name], p, rtol=0, atol=PARAM_ATOL, msg=f"{case} {name}")
