"""`slime-rl rollout`: the rollout side alone (Ray, embedded Redis, router, native engine), no trainer."""

import pytest

from slime_rl.buffer.server import EmbeddedRedis
from slime_rl.buffer.store import RedisBuffer
from slime_rl.config import BufferConfig, load_config
from slime_rl.observability.metrics import read_metrics
from slime_rl.orchestration.driver import run_rollout_only

pytestmark = pytest.mark.slow


def test_rollout_only_fills_the_persisted_buffer_with_scored_groups(tmp_path):
    cfg = load_config(["experiment=toy", f"output_dir={tmp_path}", "sft.steps=0", "mode.num_steps=2"])
    run_rollout_only(cfg)
    records = read_metrics(tmp_path / "toy" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["rollout/groups"] == cfg.rollout.rollout_batch_size for r in records)
    # The embedded server is gone, but its AOF in the run directory holds the groups for a later run.
    with EmbeddedRedis(BufferConfig(appendonly=True), data_dir=tmp_path / "toy" / "redis") as address:
        buffer = RedisBuffer.from_url(address.url, "toy")
        snapshot = buffer.snapshot()
        buffer.close()
    assert snapshot["samples"] == 2 * cfg.rollout.rollout_batch_size
    assert snapshot["unaccounted"] == 0
