"""A short toy training on a real two-node Ray cluster (loopback, token auth on): the trainer rank and the
engine land on different nodes, each engine listens on its node's IP, the buffer is a Redis reached by URL,
and the trainer reads its data from it."""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from slime_rl.observability.metrics import read_step_records
from tests.cluster.ray_cluster import loopback_ray_cluster

NUM_STEPS = 3


@pytest.mark.cluster
def test_toy_training_on_two_ray_nodes(redis_url, tmp_path):
    with loopback_ray_cluster(num_nodes=2, num_cpus_per_node=1) as cluster:
        argv = [
            sys.executable, "-m", "slime_rl.cli", "train", "experiment=toy", f"output_dir={tmp_path}",
            "sft.steps=0", "eval.interval=0", f"mode.num_steps={NUM_STEPS}",
            "cluster=ray", f"cluster.address={cluster.address}", "buffer=external", f"buffer.url={redis_url}",
            "engine.host=null",  # as on real machines: each engine on its node's IP (127.0.0.1 for both here)
        ]  # fmt: skip
        run = subprocess.run(argv, env=cluster.env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]

        run_dir = tmp_path / "toy"
        nodes = json.loads((run_dir / "logs" / "actor_nodes.json").read_text())
        assert set(nodes["node_ips"]) == set(cluster.node_ids)
        assert set(nodes["node_ips"].values()) == {"127.0.0.1"}  # nothing beyond loopback
        (trainer_node,) = nodes["trainer_ranks"]
        (engine_node,) = nodes["engine_hosts"]
        assert trainer_node != engine_node, "one CPU per node: the trainer rank and the engine need a node each"
        assert nodes["rollout_worker"] == nodes["driver"]
        password = urlsplit(redis_url).password
        assert password and password not in (run_dir / "config.yaml").read_text()  # buffer.url saved redacted

    records = read_step_records(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, NUM_STEPS + 1))
    for record in records:
        assert record["train/payload_bytes_read"] > 0  # the trainer rank read the groups from Redis itself
        # what passed through the driver: the groups' summaries and the shares, a fraction of the payload
        assert record["driver/bytes_read"] + record["driver/bytes_sent"] < record["train/payload_bytes_read"]
