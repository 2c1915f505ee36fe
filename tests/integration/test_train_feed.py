"""Trainer ranks read their data-parallel share from a real Redis buffer: one reader per model-parallel
group, the tokens broadcast to its TP peers, nothing but entry ids and advantages from the driver."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from slime_rl.buffer.store import RedisBuffer
from slime_rl.config import AlgorithmConfig, TrainerConfig
from slime_rl.orchestration.batches import plan_train_shares
from slime_rl.toy.model import make_toy_model
from slime_rl.types import Group, Sample, Status, TrainShare
from tests.integration.trainer_ranks import run_ranks


def _finished_group(name: str, rng: np.random.Generator) -> Group:
    samples = []
    for i in range(2):
        sample = Sample(uid=f"{name}-{i}", group_id=name, index=i, prompt_ids=rng.integers(3, 40, 3))
        n = int(rng.integers(1, 6))
        sample.append_tokens(rng.integers(3, 40, n), np.full(n, -1.0), version=0)
        sample.status, sample.reward = Status.COMPLETED, float(i)
        samples.append(sample)
    return Group(group_id=name, samples=samples)


def read_share(trainer, redis_url: str, run_id: str, shares: list[TrainShare]):
    """Each rank's view of its share: sample uids and tokens, and the payload bytes it read itself."""
    from slime_rl.trainer.feed import open_feed

    batch, bytes_read = open_feed(redis_url, run_id).batch(shares[trainer.layout.dp_rank])
    return {
        "tp_rank": trainer.layout.tp_rank,
        "dp_rank": trainer.layout.dp_rank,
        "uids": [s.uid for s in batch.samples],
        "responses": [s.response_ids.tolist() for s in batch.samples],
        "advantages": batch.advantages.tolist(),
        "bytes_read": bytes_read,
        "loss": trainer.train(batch)["train/loss"],
    }


@pytest.fixture
def published(redis_url):
    buffer = RedisBuffer.from_url(redis_url, f"feed-{uuid.uuid4().hex[:8]}")
    rng = np.random.default_rng(0)
    groups = [_finished_group(f"g{i}", rng) for i in range(4)]
    buffer.put_prompts(groups)
    buffer.publish(buffer.take_groups(len(groups)), version=0)
    yield buffer, {s.uid: s.response_ids.tolist() for g in groups for s in g.samples}
    buffer.clear()
    buffer.close()


def test_each_data_parallel_rank_reads_its_share_once_and_its_tp_peer_receives_it(published, redis_url, tmp_path):
    buffer, responses = published
    batch = buffer.read_batch("trainer-0", 4, block_ms=0, trainer_version=0)
    shares = plan_train_shares(batch, AlgorithmConfig(), dp_size=2, step=0)
    model = str(make_toy_model(tmp_path / "llama", arch="llama"))
    cfg = TrainerConfig(tensor_model_parallel_size=2, data_parallel_size=2, micro_batch_size=2, lr=1e-2)

    ranks = run_ranks(
        read_share, model_path=model, trainer_cfg=cfg, redis_url=redis_url, run_id=buffer.run_id,
        shares=shares,
    )  # fmt: skip

    by_dp = {}
    for rank in ranks:
        assert [responses[uid] for uid in rank["uids"]] == rank["responses"]  # the published tokens, exactly
        share = shares[rank["dp_rank"]]
        np.testing.assert_allclose(rank["advantages"], share.advantages)
        assert (rank["bytes_read"] > 0) == (rank["tp_rank"] == 0)  # one reader per model-parallel group
        by_dp.setdefault(rank["dp_rank"], []).append(rank)
    for peers in by_dp.values():
        assert peers[0]["uids"] == peers[1]["uids"] and peers[0]["loss"] == peers[1]["loss"]
    assert sorted(uid for peers in by_dp.values() for uid in peers[0]["uids"]) == sorted(responses)
    assert sum(len(share.entry_ids) for share in shares) <= 8  # names of entries, not their tokens
