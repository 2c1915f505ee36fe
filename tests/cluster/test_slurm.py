"""launch/slurm/train.sbatch in a private one-node Slurm on 127.0.0.1: the job starts Ray, Redis and the driver,
trains, and leaves no process behind, whether it finishes or is cancelled with scancel."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from slime_rl.observability.metrics import read_step_records
from slime_rl.processes import free_port, process_tree
from tests.cluster.conftest import VENV_BIN, SlurmCluster
from tests.sockets import is_loopback, listening_sockets

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "launch/slurm/train.sbatch"


def toy_overrides(output_dir: Path, num_steps: int) -> list[str]:
    return [
        "experiment=toy",
        f"output_dir={output_dir}",
        "sft.steps=0",
        "eval.interval=0",
        f"mode.num_steps={num_steps}",
    ]


def job_env(job_dir: Path, ray_tmp: Path) -> dict[str, str]:
    """One node on loopback: node IP 127.0.0.1 and every Ray listener on it; private ports and folders."""
    ray_start_args = f"--ray-client-server-port {free_port()} --dashboard-agent-listen-port {free_port()}"
    return os.environ | {
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "SLIME_NODE_IP": "127.0.0.1",
        "SLIME_RAY_PORT": str(free_port()),
        "SLIME_RAY_START_ARGS": ray_start_args,
        "SLIME_JOB_DIR": str(job_dir),
        "SLIME_RAY_TMPDIR": str(ray_tmp),
        "PYTHONUNBUFFERED": "1",
    }


def recorded_pids(job_dir: Path) -> dict[str, int]:
    """role -> PID from the job's `pids` file ("<role> <host> <pid>" lines)."""
    path = job_dir / "pids"
    if not path.exists():
        return {}
    return {role: int(pid) for role, _, pid in (line.split() for line in path.read_text().splitlines() if line)}


class ProcessWatch:
    """Every process in the trees of the job's recorded PIDs, sampled every 0.2 s while the job runs."""

    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        self.names: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for pid in recorded_pids(self.job_dir).values():
                for proc in process_tree(pid):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        self.seen.setdefault((proc.pid, proc.create_time()), proc)
                        self.names.add(proc.name())

    @contextlib.contextmanager
    def running(self) -> Iterator[ProcessWatch]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()

    def survivors(self, grace_s: float = 10.0) -> list[str]:
        """The sampled processes still alive after `grace_s` (a process reported gone is never a reused PID)."""
        _, alive = psutil.wait_procs(list(self.seen.values()), timeout=grace_s)
        return [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in alive if p.is_running()]


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    # Short, under /tmp: Ray's Unix socket paths inside it must stay under 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="slime-ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def wait_for_step(run_dir: Path, job_id: str, cluster: SlurmCluster, step: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not any(r["step"] >= step for r in read_step_records(run_dir / "metrics.jsonl")):
        assert cluster.job_state(job_id) in ("PENDING", "RUNNING"), f"job {job_id} ended before step {step}"
        assert time.monotonic() < deadline, f"job {job_id} did not train step {step} in {timeout_s:.0f} s"
        time.sleep(0.2)


def test_sbatch_toy_run_trains_every_step_and_stops_all_it_started(slurm_cluster, tmp_path, ray_tmp):
    job_dir, output = tmp_path / "job", tmp_path / "job.out"
    with (
        slurm_cluster.submitted(
            SBATCH, toy_overrides(tmp_path, num_steps=2), output=output, cwd=REPO, env=job_env(job_dir, ray_tmp)
        ) as job_id,
        ProcessWatch(job_dir).running() as watch,
    ):
        wait_for_step(tmp_path / "toy", job_id, slurm_cluster, step=1, timeout_s=300)
        # Everything is up now: Ray, Redis, router, engine and trainer listen on loopback only.
        procs = [p for p in list(watch.seen.values()) if p.is_running()]
        exposed = [s for s in listening_sockets(procs) if not is_loopback(s[2])]
        state = slurm_cluster.wait_job(job_id, timeout_s=120)
    log = output.read_text()
    assert state == "COMPLETED", log
    assert "slime-rl train exited with status 0" in log
    assert exposed == []
    assert [r["step"] for r in read_step_records(tmp_path / "toy/metrics.jsonl")] == [1, 2]
    assert {"batch", "srun-ray-head", "ray-head", "redis", "driver"} <= recorded_pids(job_dir).keys()
    assert {"gcs_server", "raylet"} <= watch.names  # the watch saw Ray's own processes, not just the recorded ones
    assert watch.survivors() == []


def test_scancel_of_a_training_job_stops_every_process_it_started(slurm_cluster, tmp_path, ray_tmp):
    job_dir, output = tmp_path / "job", tmp_path / "job.out"
    with (
        slurm_cluster.submitted(
            SBATCH, toy_overrides(tmp_path, num_steps=500), output=output, cwd=REPO, env=job_env(job_dir, ray_tmp)
        ) as job_id,
        ProcessWatch(job_dir).running() as watch,
    ):
        wait_for_step(tmp_path / "toy", job_id, slurm_cluster, step=1, timeout_s=300)
        slurm_cluster.command("scancel", job_id)
        state = slurm_cluster.wait_job(job_id, timeout_s=90)
    log = output.read_text()
    assert state == "CANCELLED", log
    assert "stopped everything this job started" in log
    assert max(r["step"] for r in read_step_records(tmp_path / "toy/metrics.jsonl")) < 500
    assert watch.survivors() == []
