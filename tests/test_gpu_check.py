"""The GPU check (scripts/gpu_check.sh, scripts/gpu_check.py, tests/gpu_plugin.py) on a CPU machine.

Without CUDA the command must say it needs a GPU, exit 0 and run nothing. Its CUDA-independent
parts run here on the CPU: the bf16-vs-fp32 comparison, determinism, the compile check (backend
``aot_eager``), the loss benchmark, the sync counter's bookkeeping, the JUnit parsing, the JSON
writer, the trainer benchmark at tiny size, and the pytest plugin's device/dtype mode.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from gpu_plugin import DeviceDtypeMode, _patch_training_arguments
from script_modules import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    """scripts/gpu_check.py as a module."""
    yield load_script(SCRIPT, "gpu_check")
    sys.modules.pop("gpu_check", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU branch")
def test_shell_command_without_cuda_says_so_exits_0_and_runs_nothing(tmp_path, child_env):
    out_dir = tmp_path / "out"
    results = REPO / "results" / "gpu"
    before = {p.name: p.stat().st_mtime_ns for p in results.glob("*")} if results.exists() else {}
    env = {**child_env, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path / "copy")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--out-dir", str(out_dir)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "needs a CUDA GPU" in proc.stdout and "nothing was run" in proc.stdout
    assert not out_dir.exists() and not (tmp_path / "copy").exists()
    after = {p.name: p.stat().st_mtime_ns for p in results.glob("*")} if results.exists() else {}
    assert after == before  # no log, no JSON


def test_main_without_cuda_returns_0_and_writes_nothing(gc, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gc.main(["--out-dir", str(tmp_path / "out"), "--copy-to", str(tmp_path / "copy")]) == 0
    assert gc.NEEDS_CUDA_MESSAGE in capsys.readouterr().out
    assert not (tmp_path / "out").exists() and not (tmp_path / "copy").exists()


def test_cpu_quick_run_writes_one_json_with_every_section(gc, tmp_path):
    sections = "env,bf16,determinism,compile,syncs,bench_losses,pytest_fp32,pytest_bf16,vllm"
    rc = gc.main(["--device", "cpu", "--quick", "--only", sections, "--out-dir", str(tmp_path / "out"),
                  "--copy-to", str(tmp_path / "copy")])
    assert rc == 0
    data = json.loads((tmp_path / "out" / "gpu_check_cpu.json").read_text())
    assert json.loads((tmp_path / "copy" / "gpu_check_cpu.json").read_text())["sections"] == data["sections"]
    s = data["sections"]
    assert list(s) == sections.split(",")
    assert data["environment"]["torch"] == torch.__version__ and data["environment"]["device"] == "cpu"
    assert s["bf16"]["status"] == "ok" and s["determinism"]["status"] == "ok", (s["bf16"], s["determinism"])
    for name in ("grpo", "bapo", "archer"):  # no graph break, compiled == eager
        case = s["compile"]["cases"][name]
        assert case["graph_breaks"] == 0 and case["matches_eager"], case
    assert s["compile"]["status"] == "ok"
    for name in ("syncs", "pytest_fp32", "pytest_bf16", "vllm"):
        assert s[name]["status"] == "skipped" and s[name]["reason"]
    assert "vLLM GPU path skipped" in s["vllm"]["reason"]
    rows = s["bench_losses"]["rows"]
    assert {r["case"] for r in rows} == {"plain clip", "BAPO", "Archer", "Archer without KL"}
    assert all(math.isfinite(r["median_ms"]) and r["median_ms"] > 0 for r in rows)
    for dtype in ("float32", "bfloat16"):  # each ratio is the case's median over the plain clip's, per dtype
        by_case = {r["case"]: r for r in rows if r["dtype"] == dtype}
        assert by_case["plain clip"]["ratio_to_plain"] == 1.0
        for r in by_case.values():
            assert r["ratio_to_plain"] == pytest.approx(r["median_ms"] / by_case["plain clip"]["median_ms"], rel=1e-9)
    table = "\n".join(gc.summary_lines(data))
    for name in sections.split(","):
        assert f"| {name} |" in table
    assert "bounds 5/5" in table and "0 breaks" in table


def test_bf16_matches_fp32_on_100_random_batches(gc):
    res = gc.compare_bf16_fp32("cpu", n_batches=100, seed=1, max_b=8, max_t=96)
    for name in ("bapo", "archer"):
        loss = res["losses"][name]
        assert loss["bounds_identical"] == 100, loss  # BAPO bounds, Archer classes
        assert loss["loss_within_tol"] == 100 and loss["grad_within_tol"] == 100, loss
        assert loss["flips_off_bound"] == 0
    assert res["ok"]


def test_bf16_comparison_catches_a_loss_that_changes_its_bounds(gc, monkeypatch):
    """A bf16 path that picks other bounds must fail the check (the check is not vacuous)."""
    real = gc.loss_step

    def skewed(name, x, config=None, forward=None):
        if name == "bapo" and x["ratio"].dtype == torch.bfloat16:
            config = gc.BAPOConfig(high_start=1.3)
        return real(name, x, config, forward)

    monkeypatch.setattr(gc, "loss_step", skewed)
    res = gc.compare_bf16_fp32("cpu", n_batches=3, max_b=4, max_t=32)
    assert not res["ok"] and res["losses"]["bapo"]["bounds_identical"] < 3


def test_count_syncs_attributes_each_sync_to_our_code(gc):
    modes = []
    fake_losses = str(gc.PKG_DIR / "losses" / "fake.py")  # a frame in adaclip_rl/losses
    code = compile("import warnings\ndef op():\n    warnings.warn('called a synchronizing CUDA operation')\n",
                   fake_losses, "exec")
    ns: dict = {}
    exec(code, ns)

    def work():
        ns["op"]()  # a sync inside adaclip_rl/losses
        warnings.warn("called a synchronizing CUDA operation", stacklevel=1)  # one outside
        warnings.warn("something else", stacklevel=1)  # not a sync

    count = gc.count_syncs(work, set_mode=modes.append)
    assert modes == ["warn", 0]
    assert (count.total, count.in_losses, count.in_adaclip) == (2, 1, 1)
    d = count.as_dict()
    assert d["sites"]["adaclip_rl/losses/fake.py:3"] == 1


def test_parse_junit_splits_assertions_from_exceptions(gc, tmp_path, child_env):
    pkg = tmp_path / "adaclip_rl"  # a stand-in library module, so a raise "in adaclip_rl" can be told apart
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "lib.py").write_text("def f():\n    raise ValueError('library')\n")
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "def test_ok():\n    pass\n"
        "def test_assert():\n    assert 1 == 2\n"
        "def test_raise():\n    raise RuntimeError('boom')\n"
        "def test_lib():\n    from adaclip_rl.lib import f\n    f()\n"
        "def test_skip():\n    pytest.skip('no')\n")
    junit = tmp_path / "j.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_x.py"),
                    f"--junitxml={junit}", "--rootdir", str(tmp_path)], cwd=tmp_path, env=child_env,
                   capture_output=True, timeout=120)
    res = gc.parse_junit(junit)
    assert (res["tests"], res["passed"], res["failures"], res["skipped"]) == (5, 1, 3, 1)
    kinds = {f["test"].split("::")[-1]: f["kind"] for f in res["failed"]}
    assert kinds == {"test_assert": "assertion", "test_raise": "exception elsewhere",
                     "test_lib": "exception in adaclip_rl"}
    assert res["failed_by_kind"] == {"assertion": 1, "exception in adaclip_rl": 1, "exception elsewhere": 1}


def test_parse_verbose_log_counts_a_run_cut_short(gc, tmp_path):
    log = tmp_path / "log"
    log.write_text("tests/a.py::test_1 PASSED [ 10%]\ntests/a.py::test_2 FAILED [ 20%]\nnoise\n"
                   "tests/b.py::test_3[x] SKIPPED (why) [ 30%]\n")
    res = gc.parse_verbose_log(log)
    assert (res["tests"], res["passed"], res["failures"], res["skipped"], res["partial"]) == (3, 1, 1, 1, True)


def test_run_pytest_with_the_device_option(gc, tmp_path):
    res = gc.run_pytest("fp32", ("tests/losses/test_registry.py",), 300, tmp_path, device="cpu")
    assert res["returncode"] == 0, (tmp_path / res["log"]).read_text()[-2000:]
    assert res["passed"] >= 1 and res["failures"] == res["errors"] == 0


def test_json_writer_is_strict_and_atomic(gc, tmp_path):
    path = tmp_path / "a" / "r.json"
    gc.write_json(path, {"x": torch.tensor([1.5, 2.0]), "inf": math.inf, "nan": float("nan"), "t": (1, "a")})
    assert json.loads(path.read_text()) == {"x": [1.5, 2.0], "inf": "inf", "nan": "nan", "t": [1, "a"]}
    assert not list(path.parent.glob("*.tmp"))


def test_report_records_an_error_and_goes_on(gc, tmp_path):
    report = gc.Report(tmp_path / "r.json", tmp_path / "copy", budget_s=1000)
    with report.section("boom") as e:
        e["partial"] = 1
        raise ValueError("bad")
    with report.section("later", min_s=10_000) as e:
        assert e is None
    data = json.loads((tmp_path / "copy" / "r.json").read_text())
    assert data["sections"]["boom"]["status"] == "error" and "ValueError: bad" in data["sections"]["boom"]["error"]
    assert data["sections"]["later"]["status"] == "skipped"


@pytest.mark.slow
def test_trainer_benchmark_at_tiny_size(gc, tmp_path):
    res = gc.bench_trainer(torch.device("cpu"), gc.TrainerBenchConfig.quick(), tmp_path)
    names = [r["trainer"] for r in res["rows"]]
    assert names == ["TRL GRPOTrainer", "AdaClip grpo", "AdaClip bapo", "AdaClip archer"]
    assert all(r["train_step_ms"] > 0 and r["loss_backward_ms"] > 0 for r in res["rows"])
    base = res["rows"][0]  # TRL's trainer is the baseline of both ratios
    for r in res["rows"]:
        assert r["train_step_ms"] == pytest.approx(statistics.median(r["train_step_samples_ms"]), rel=1e-9)
        assert r["train_vs_trl"] == pytest.approx(r["train_step_ms"] / base["train_step_ms"], rel=1e-9)
        assert r["loss_vs_trl"] == pytest.approx(r["loss_backward_ms"] / base["loss_backward_ms"], rel=1e-9)
    assert base["train_vs_trl"] == base["loss_vs_trl"] == 1.0
    assert res["model"]["shape"] == "tiny" and res["generation"] == "transformers"


def test_timer_times_each_call_and_not_the_warmup(gc):
    """``_timed`` (every benchmark's clock): one sample per repeat, each the duration of one call, in
    seconds; the warm-up calls run but are not timed."""
    calls = []

    def work():
        calls.append(time.perf_counter())
        time.sleep(0.03 if len(calls) > 2 else 0.6)  # the two warm-up calls are slow: they must not count

    samples = gc._timed(work, torch.device("cpu"), repeats=3, warmup=2)
    assert len(calls) == 5 and len(samples) == 3
    assert all(0.03 <= s < 0.5 for s in samples), samples  # seconds, one call each


def test_qwen_shape_is_qwen2_5_0_5b(gc):
    from transformers import Qwen2Config

    config = Qwen2Config(**gc.QWEN25_05B)
    head_dim = config.hidden_size // config.num_attention_heads
    embed = config.vocab_size * config.hidden_size
    per_layer = (config.hidden_size * (config.hidden_size + 2 * config.num_key_value_heads * head_dim)
                 + config.hidden_size * config.hidden_size + 3 * config.hidden_size * config.intermediate_size)
    assert 0.48e9 < embed + config.num_hidden_layers * per_layer < 0.5e9  # Qwen2.5-0.5B: 0.49 B parameters


# ------------------------------------------------------------------------- the pytest plugin
def test_plugin_defaults_are_the_plain_cpu_run(device, dtype):
    assert device == torch.device("cpu") and dtype == torch.float32


def test_device_mode_moves_factories_and_keeps_cpu_random_streams():
    want = torch.rand(3, generator=torch.Generator().manual_seed(5))
    with DeviceDtypeMode("meta"):
        on_meta = torch.rand(3, generator=torch.Generator().manual_seed(5))
        assert on_meta.device.type == "meta"  # drawn on the CPU generator, then moved
        assert torch.zeros(2).device.type == "meta" and torch.tensor([1.0]).device.type == "meta"
        assert torch.zeros(2, device="cpu").device.type == "cpu"
    with DeviceDtypeMode("cpu", torch.bfloat16):
        got = torch.rand(3, generator=torch.Generator().manual_seed(5))
        assert got.dtype == torch.bfloat16 and torch.equal(got, want.to(torch.bfloat16))
        assert torch.ones(2, dtype=torch.float32).dtype == torch.float32  # explicit dtype kept
        assert torch.arange(3).dtype == torch.int64 and torch.zeros(2, dtype=torch.float64).dtype == torch.float64
        leaf = torch.tensor([1.0, 2.0], requires_grad=True)  # still a leaf after the cast
        assert leaf.is_leaf and leaf.requires_grad and leaf.dtype == torch.bfloat16
    with DeviceDtypeMode("meta"):
        moved = torch.rand(2, generator=torch.Generator().manual_seed(0), requires_grad=True)
        assert moved.is_leaf and moved.requires_grad and moved.device.type == "meta"


def test_training_arguments_patch_moves_trainers_to_the_device_in_bf16(monkeypatch):
    from transformers import TrainingArguments

    seen = {}

    def stub(self):
        seen.update(use_cpu=self.use_cpu, bf16=self.bf16, pin=self.dataloader_pin_memory)

    monkeypatch.setattr(TrainingArguments, "__post_init__", stub)  # restored after the test
    _patch_training_arguments("cuda", "bf16")
    TrainingArguments(output_dir=os.devnull, use_cpu=True, bf16=False)
    assert seen == {"use_cpu": False, "bf16": True, "pin": False}
