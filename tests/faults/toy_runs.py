"""A real toy training run in a subprocess, for fault injection: start it, watch its steps, find and
signal its processes by PID, and kill its whole process tree at the end."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from slime_rl.observability.metrics import read_step_records
from slime_rl.processes import kill_tree, process_tree

NATIVE_ENGINE_MODULE = "slime_rl.engines.native"


def toy_overrides(output_dir: Path, *extra: str, num_engines: int = 2) -> list[str]:
    """A short toy run: no warm-up, no evals, two engines by default (one can die while the other serves)."""
    return [
        "experiment=toy",
        f"output_dir={output_dir}",
        "sft.steps=0",
        "eval.interval=0",
        f"engine.num_engines={num_engines}",
        f"cluster.num_cpus={1 + num_engines}",  # logical CPUs: one for the trainer rank and one per engine
        *extra,
    ]


def step_records(run_dir: Path) -> list[dict]:
    return read_step_records(run_dir / "metrics.jsonl")


def engine_processes(pid: int) -> list[psutil.Process]:
    """The native engine servers among the descendants of `pid`, oldest first."""
    found = []
    for proc in process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            if NATIVE_ENGINE_MODULE in proc.cmdline():
                found.append(proc)
    return sorted(found, key=lambda p: p.create_time())


@contextlib.contextmanager
def toy_training(overrides: list[str], log_path: Path) -> Iterator[subprocess.Popen]:
    """`slime-rl train overrides` in a subprocess for the block; its whole tree is killed afterwards."""
    with open(log_path, "wb") as log:
        driver = subprocess.Popen(
            [sys.executable, "-m", "slime_rl.cli", "train", *overrides],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONUNBUFFERED": "1"},
        )
    try:
        yield driver
    finally:
        kill_tree(driver.pid)


def wait_for_step(driver: subprocess.Popen, run_dir: Path, step: int, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(r["step"] >= step for r in step_records(run_dir)):
        assert driver.poll() is None, f"the run exited with code {driver.returncode} before step {step}"
        assert time.monotonic() < deadline, f"the run did not reach step {step} in {timeout_s:.0f} s"
        time.sleep(0.1)
