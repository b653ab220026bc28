"""The project installs as a package: `whisper-service` works from any folder, its help
answers without importing torch, and a CPU host gets no GPU-only packages."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

COMMAND = Path(sys.executable).with_name("whisper-service")  # the console script of the venv
# a stand-in for torch that fails on import: put first on PYTHONPATH, it proves --help
# imports nothing that transcribes (torch, whisper and the models take seconds to import)
POISON = "raise ImportError('--help must not import torch')\n"
GPU_ONLY = ("triton", "nvidia-")


def _run(args, cwd: Path, poison: Path = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if poison is not None:
        env["PYTHONPATH"] = str(poison)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def poison(tmp_path: Path) -> Path:
    (tmp_path / "poison" / "torch").mkdir(parents=True)
    (tmp_path / "poison" / "torch" / "__init__.py").write_text(POISON)
    return tmp_path / "poison"


def test_the_console_command_is_installed():
    assert COMMAND.exists(), "make setup installs the project (pip install -e .)"


@pytest.mark.parametrize("args, usage", [
    ([], "usage: whisper-service [-h]"),
    (["evaluate"], "usage: whisper-service evaluate"),
    (["live"], "usage: whisper-service live"),
])
def test_help_works_outside_the_checkout_without_torch(tmp_path, poison, args, usage):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    done = _run([str(COMMAND), *args, "--help"], cwd=outside, poison=poison)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(usage)
    assert "must not import torch" not in done.stderr


def test_the_module_runs_outside_the_checkout(tmp_path):
    done = _run([sys.executable, "-m", "whisper_service", "--help"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--beam-size" in done.stdout


def test_a_bad_flag_is_refused_outside_the_checkout(tmp_path):
    done = _run([str(COMMAND), "talk.mp3", "--beam-size", "999"], cwd=tmp_path)
    assert done.returncode == 2
    assert "beam_size" in done.stderr


@pytest.mark.skipif(torch.version.cuda is not None, reason="a CUDA build of torch brings triton itself")
def test_a_cpu_host_gets_no_gpu_only_packages():
    names = {(d.metadata["Name"] or "").lower() for d in importlib.metadata.distributions()}
    gpu_only = sorted(n for n in names if n.startswith(GPU_ONLY))
    assert gpu_only == [], f"installed on a CPU host: {gpu_only}"
    assert "openai-whisper" in names
