import numpy as np

from slime_rl.buffer.codec import decode_share, encode_group, encode_share
from slime_rl.buffer.store import Batch
from slime_rl.config import AlgorithmConfig
from slime_rl.orchestration.batches import make_sft_batches, plan_train_shares
from slime_rl.trainer.feed import TrainFeed
from slime_rl.types import Group, GroupSummary, Sample


def _group(gid: str, rewards: list[float], response_len: int = 2) -> Group:
    samples = [
        Sample(
            uid=f"{gid}-{i}", group_id=gid, index=i, prompt_ids=[1, 2], response_ids=[3] * response_len,
            rollout_logprobs=[0.0] * response_len, loss_mask=[1] * response_len, reward=r,
        )
        for i, r in enumerate(rewards)
    ]  # fmt: skip
    return Group(group_id=gid, samples=samples)


class _Payloads:
    """Stands in for a trainer rank's `RedisBuffer`: the encoded groups by entry id."""

    def __init__(self, groups: dict[str, Group]) -> None:
        self.payloads = {entry: encode_group(g) for entry, g in groups.items()}

    def fetch_payloads(self, entry_ids: list[str]) -> list[bytes]:
        return [self.payloads[e] for e in entry_ids]


def _batch(groups: list[Group], versions: list[int] | None = None) -> tuple[Batch, _Payloads]:
    entries = [f"{i}-0" for i in range(len(groups))]
    batch = Batch(
        summaries=[GroupSummary.of(g) for g in groups],
        entry_ids=entries,
        versions=versions or [0] * len(groups),
    )
    return batch, _Payloads(dict(zip(entries, groups, strict=True)))


def _train_batches(groups, algorithm, *, dp_size, step, partial_policy="recompute", versions=None):
    """The shares the driver plans, sent as bytes and turned into batches by each rank's feed."""
    batch, buffer = _batch(groups, versions)
    shares = plan_train_shares(batch, algorithm, dp_size=dp_size, step=step, partial_policy=partial_policy)
    return [TrainFeed(buffer, None).batch(decode_share(encode_share(share)))[0] for share in shares]


def test_shares_centre_each_group_before_the_split():
    groups = [_group("a", [0.0, 1.0]), _group("b", [2.0, 4.0])]
    batches = _train_batches(groups, AlgorithmConfig(normalize_std=False), dp_size=1, step=3)
    assert len(batches) == 1 and batches[0].step == 3
    # group a: mean 0.5 -> [-0.5, 0.5]; group b: mean 3 -> [-1, 1]
    np.testing.assert_allclose(batches[0].advantages, [-0.5, 0.5, -1.0, 1.0])


def test_shares_leave_failed_samples_out_of_the_group_mean():
    group = _group("a", [1.0, 0.0, 1.0, 0.0])
    group.samples[3].fail("reward: boom")  # its reward 0 is no score
    batches = _train_batches([group], AlgorithmConfig(normalize_std=False), dp_size=1, step=0)
    # scored rewards [1, 0, 1]: mean 2/3; the failed sample gets 0 and trains nothing
    np.testing.assert_allclose(batches[0].advantages, [1 / 3, -2 / 3, 1 / 3, 0.0], rtol=1e-6)


def test_shares_split_samples_evenly_and_keep_advantages_aligned():
    groups = [_group("a", [0.0, 1.0]), _group("b", [2.0, 4.0], response_len=6)]
    batches = _train_batches(groups, AlgorithmConfig(normalize_std=False), dp_size=2, step=0)
    assert [len(b.samples) for b in batches] == [2, 2]
    expected = {"a-0": -0.5, "a-1": 0.5, "b-0": -1.0, "b-1": 1.0}
    for batch in batches:
        for sample, advantage in zip(batch.samples, batch.advantages, strict=True):
            assert advantage == expected[sample.uid]
    # token balance: each rank gets one long sample of group b
    assert sorted(sum(s.group_id == "b" for s in b.samples) for b in batches) == [1, 1]


def test_a_share_names_only_the_entries_its_samples_come_from():
    groups = [_group("a", [0.0, 1.0], response_len=1), _group("b", [2.0, 4.0], response_len=9)]
    batch, _ = _batch(groups)
    shares = plan_train_shares(batch, AlgorithmConfig(), dp_size=2, step=0)
    for share in shares:
        assert len(set(share.entry_ids)) == len(share.entry_ids)
        assert {e for e, _ in share.samples} == set(range(len(share.entry_ids)))


def test_make_sft_batches_have_zero_advantages():
    samples = _group("a", [0.0, 0.0, 0.0, 0.0]).samples
    batches = make_sft_batches(samples, dp_size=2, step=0)
    assert [len(b.samples) for b in batches] == [2, 2]
    assert all((b.advantages == 0).all() for b in batches)


def _resumed_group(gid: str) -> Group:
    # 5 response tokens: [0, 3) from version 1, [3, 5) from version 2; token 4 was already masked.
    sample = Sample(
        uid=f"{gid}-0", group_id=gid, index=0, prompt_ids=[1], response_ids=[3] * 5, rollout_logprobs=[0.0] * 5,
        loss_mask=[1, 1, 1, 1, 0], weight_spans=[(1, 0, 3), (2, 3, 5)], reward=1.0,
    )  # fmt: skip
    return Group(group_id=gid, samples=[sample])


def test_mask_stale_zeroes_tokens_older_than_the_publish_version():
    group = _resumed_group("a")
    (batch,) = _train_batches([group], AlgorithmConfig(), dp_size=1, step=2, partial_policy="mask_stale", versions=[2])
    assert batch.samples[0].loss_mask.tolist() == [0, 0, 0, 1, 0]
    assert group.samples[0].loss_mask.tolist() == [1, 1, 1, 1, 0]  # the buffer's copy is untouched


def test_mask_stale_uses_each_groups_publish_version():
    groups = [_resumed_group("a"), _resumed_group("b")]
    batches = _train_batches(groups, AlgorithmConfig(), dp_size=1, step=5, partial_policy="mask_stale", versions=[1, 3])
    masks = {s.uid: s.loss_mask.tolist() for s in batches[0].samples}
    assert masks == {"a-0": [1, 1, 1, 1, 0], "b-0": [0, 0, 0, 0, 0]}


def test_recompute_keeps_stale_tokens_trained():
    (batch,) = _train_batches([_resumed_group("a")], AlgorithmConfig(), dp_size=1, step=2, versions=[2])
    assert batch.samples[0].loss_mask.tolist() == [1, 1, 1, 1, 0]
