"""The documentation: the site builds with ``mkdocs build --strict`` (pages, links, API reference
from the docstrings), and the code on the getting-started page and in the README runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs tools are in the dev extra")
pytest.importorskip("mkdocstrings_handlers.python", reason="the docs tools are in the dev extra")

REPO = Path(__file__).resolve().parents[1]


def _mkdocs(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO), "HOME": str(cwd)}
    return subprocess.run([sys.executable, "-m", "mkdocs", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_site_builds_strict(tmp_path):
    out = _mkdocs(["build", "--strict", "-d", str(tmp_path / "site")], cwd=REPO)
    assert out.returncode == 0, out.stderr[-4000:]
    site = tmp_path / "site"
    for page in ("getting_started", "cli", "policy_losses", "gradient_clipping", "offpolicy_rollouts", "async",
                 "sandbox", "staleness_study"):
        assert (site / page / "index.html").is_file(), page
    # the API reference is rendered from the docstrings (a function's docstring text appears)
    losses = (site / "api" / "losses" / "index.html").read_text()
    assert "bapo_search" in losses and "Archer" in losses
    trainers = (site / "api" / "trainers" / "index.html").read_text()
    assert "AdaClipGRPOTrainer" in trainers and "AdaClipAsyncGRPOConfig" in trainers


def test_every_design_note_is_a_page():
    nav = (REPO / "mkdocs.yml").read_text()
    for note in sorted((REPO / "docs").glob("*.md")):
        assert f": {note.name}" in nav, f"docs/{note.name} is not in mkdocs.yml's nav"


@pytest.mark.parametrize("page", ["::: adaclip_rl.losses.no_such_module", "[a link](no_such_page.md)"])
def test_strict_build_fails_on_a_broken_reference(tmp_path, page):
    """What the strict build guards against: a reference to a missing object or page fails it."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(f"# Home\n\n{page}\n")
    config = (REPO / "mkdocs.yml").read_text()
    config = config.split("\nnav:")[0].replace("scripts/mkdocs_source_links.py", str(REPO / "scripts/mkdocs_source_links.py"))
    config = config.replace("paths: [.]", f"paths: [{REPO}]")
    (tmp_path / "mkdocs.yml").write_text(config)
    out = _mkdocs(["build", "--strict", "-d", str(tmp_path / "site")], cwd=tmp_path, timeout=120)
    assert out.returncode != 0


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def _run_code(code: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    script = cwd / "snippet.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**env, "PYTHONPATH": str(REPO)})


def test_getting_started_code_runs_as_written(tmp_path, child_env):
    blocks = _python_blocks((REPO / "docs" / "getting_started.md").read_text())
    assert len(blocks) == 2
    out = _run_code("\n".join(blocks), tmp_path, child_env)
    assert out.returncode == 0, out.stderr[-4000:]
    c_high = [line for line in out.stdout.splitlines() if line.startswith("c_high at step 1:")]
    assert len(c_high) == 1 and 1.2 <= float(c_high[0].split(":")[1]) <= 3.0  # BAPO's bound, within its range
    assert (tmp_path / "runs" / "recipe" / "metrics.png").is_file()
    assert (tmp_path / "runs" / "recipe" / "model.safetensors").is_file()


def test_readme_example_runs(tmp_path, child_env):
    """The README's Python example, its dataset included; the only changes: the model id (no Hub
    here: a tiny model built on the spot) and use_vllm=True replaced by CPU-sized settings."""
    readme = (REPO / "README.md").read_text()
    block = _python_blocks(readme.split("## Using it", 1)[1])[0]
    assert 'model = "Qwen/Qwen2.5-Math-7B"' in block and "use_vllm=True" in block
    tiny = ("from adaclip_rl.tasks import ArithmeticTask\nfrom adaclip_rl.tasks.tiny_model import build_tiny_model\n"
            "model = str(build_tiny_model('tiny', ArithmeticTask().corpus(300)))")
    block = block.replace('model = "Qwen/Qwen2.5-Math-7B"', tiny)
    block = block.replace("use_vllm=True", "max_steps=1, per_device_train_batch_size=4, num_generations=4, "
                          "max_completion_length=8, use_cpu=True, bf16=False, report_to='none'")
    out = _run_code(block + "\nprint(trainer.state.global_step)\n", tmp_path, child_env)
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.strip().splitlines()[-1] == "1"
