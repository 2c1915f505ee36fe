"""What a measurement ran on: hardware, library versions and the git commit. Benchmarks and run summaries
attach it so a figure can be compared only with figures from the same kind of machine and code."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def hardware_info() -> dict[str, object]:
    """CPU model and count, memory, platform, Python and torch versions, and a CUDA device if there is one."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    meminfo = Path("/proc/meminfo")
    mem_kb = next(
        (int(line.split()[1]) for line in meminfo.read_text().splitlines() if line.startswith("MemTotal")), 0
    ) if meminfo.exists() else 0  # fmt: skip
    info: dict[str, object] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_commit(root: str | Path | None = None) -> str:
    """HEAD of the checkout at `root` (default: this source tree), suffixed `-dirty` with uncommitted changes."""
    cwd = Path(root) if root else Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if status.stdout.strip() else "")
