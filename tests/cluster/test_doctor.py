"""`slime-rl doctor` on this machine and on a 2-node loopback Ray cluster, run as the user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from slime_rl.processes import free_port
from tests.cluster.ray_cluster import loopback_ray_cluster

pytestmark = pytest.mark.cluster

SLIME_RL = str(Path(sys.executable).with_name("slime-rl"))


def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SLIME_RL, "doctor", *args], capture_output=True, text=True, timeout=180, env=env, cwd="/tmp")


def checks_by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_doctor_on_this_machine_reports_versions_and_a_working_embedded_redis():
    result = doctor("--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    versions = report["versions"]
    for name in ("python", "torch", "megatron-core", "ray", "transformers", "sglang-router", "redis_server"):
        assert versions[name], name
    assert "sglang" in versions and "cuda" in versions and "nccl" in versions
    checks = checks_by_name(report)
    assert checks["redis"]["status"] == "ok" and "127.0.0.1" in checks["redis"]["detail"]
    assert checks["placement plan"]["status"] == "ok"
    assert report["gpus"]["count"] >= 0


def test_doctor_reports_an_unreachable_buffer_url_and_missing_gpus_with_their_fixes():
    url = f"redis://:pw@127.0.0.1:{free_port('127.0.0.1')}/0"  # nothing listens there
    result = doctor("--json", f"buffer.url={url}", "cluster.num_gpus=64")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    checks = checks_by_name(report)
    assert report["ok"] is False
    assert checks["redis"]["status"] == "fail" and "buffer.url" in checks["redis"]["fix"]
    assert "pw@" not in json.dumps(report)  # the password stays out of the report
    assert checks["gpus"]["status"] == "fail" and "cluster.num_gpus=" in checks["gpus"]["fix"]


def test_doctor_table_for_humans_names_each_problem():
    result = doctor("buffer.url=redis://127.0.0.1:1/0")
    assert result.returncode == 1
    assert "slime-rl doctor" in result.stdout and "fail" in result.stdout and "buffer.url" in result.stdout


def test_doctor_on_a_joined_cluster_reaches_every_node():
    with loopback_ray_cluster(num_nodes=2) as cluster:
        result = doctor("--json", "cluster=ray", f"cluster.address={cluster.address}", env=cluster.env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert sorted(n["node_id"] for n in report["nodes"]) == sorted(cluster.node_ids)
    assert all(n["alive"] and n["ran_task"] for n in report["nodes"])
    checks = checks_by_name(report)
    assert checks["ray cluster"]["status"] == "ok" and "2 node(s)" in checks["ray cluster"]["detail"]
    assert checks["ray node 1 (127.0.0.1)"]["status"] == "ok"
