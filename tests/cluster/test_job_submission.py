"""launch/ray_job.sh against a real Ray head's job server on 127.0.0.1: the repository is uploaded as the job's
working dir (without .venv, outputs, .git), the toy run trains, and the script exits with the job's status."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from slime_rl.observability.metrics import read_step_records
from tests.cluster.conftest import RayHead

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
RAY_JOB = REPO / "launch/ray_job.sh"


def submit(head: RayHead, overrides: list[str]) -> subprocess.CompletedProcess[str]:
    env = head.env | {"RAY_ADDRESS": head.job_server}
    return subprocess.run(
        [str(RAY_JOB), *overrides], env=env, cwd="/", capture_output=True, text=True, timeout=400, check=False
    )


def test_ray_job_sh_uploads_the_repo_trains_and_exits_0_when_the_job_succeeds(ray_job_head, tmp_path):
    overrides = ["experiment=toy", f"output_dir={tmp_path}", "sft.steps=0", "eval.interval=0", "mode.num_steps=2"]
    result = submit(ray_job_head, overrides)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "SUCCEEDED" in log
    assert [r["step"] for r in read_step_records(tmp_path / "toy/metrics.jsonl")] == [1, 2]
    # The driver ran in Ray's uploaded copy of the repository, which holds the source but none of the excluded paths.
    hydra = yaml.safe_load((tmp_path / "toy/.hydra/hydra.yaml").read_text())
    job_cwd = Path(hydra["hydra"]["runtime"]["cwd"])
    assert job_cwd.is_relative_to(ray_job_head.temp_dir) and "working_dir_files" in job_cwd.parts, job_cwd
    assert (job_cwd / "launch/ray_job.sh").read_bytes() == RAY_JOB.read_bytes()
    assert not any((job_cwd / name).exists() for name in (".venv", ".git", "outputs"))


def test_ray_job_sh_exits_1_when_the_job_fails(ray_job_head, tmp_path):
    result = submit(ray_job_head, ["experiment=toy", f"output_dir={tmp_path}", "mode.num_steps=-1"])
    log = result.stdout + result.stderr
    assert result.returncode == 1, log
    assert "mode.num_steps must be >= 0" in log  # the job's own error, from the followed logs
    assert "FAILED" in log


def test_ray_job_sh_without_a_job_server_address_says_what_to_set(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    result = subprocess.run([str(RAY_JOB)], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "set RAY_ADDRESS" in result.stderr
