"""Data-parallel split balanced by tokens."""

from __future__ import annotations

import numpy as np
import pytest

from slime_rl.buffer.batching import partition_balanced, split_groups, split_samples
from slime_rl.types import Group, Sample


def sample(uid: str, num_tokens: int, group_id: str = "g") -> Sample:
    return Sample(uid=uid, group_id=group_id, index=0, prompt_ids=np.zeros(num_tokens))


def test_partition_balances_token_sums_with_equal_counts():
    # LPT by hand: 9->r0, 8->r1, 7->r1 (15), 2->r0 (11), 1->r0 (12, now full), 1->r1 (16).
    parts = partition_balanced([9, 1, 8, 7, 2, 1], 2)

    assert parts == [[0, 1, 4], [2, 3, 5]]
    assert [sum([9, 1, 8, 7, 2, 1][i] for i in p) for p in parts] == [12, 16]


def test_partition_without_equal_counts_can_give_one_long_item_its_own_rank():
    assert partition_balanced([10, 1, 1, 1, 1, 1], 2, equal_count=False) == [[0], [1, 2, 3, 4, 5]]


def test_partition_uneven_count_is_refused_with_a_fix():
    with pytest.raises(ValueError, match="multiple of the data-parallel size"):
        partition_balanced([1, 2, 3], 2)


def test_partition_covers_every_index_once():
    counts = list(np.random.default_rng(0).integers(1, 1000, 64))

    parts = partition_balanced(counts, 8)

    assert sorted(i for p in parts for i in p) == list(range(64))
    sums = [sum(counts[i] for i in p) for p in parts]
    assert max(sums) - min(sums) <= max(counts)


def test_split_samples_keeps_input_order_within_a_rank():
    samples = [sample(f"s{i}", n) for i, n in enumerate([5, 5, 1, 1])]

    ranks = split_samples(samples, 2)

    assert [[s.uid for s in r] for r in ranks] == [["s0", "s2"], ["s1", "s3"]]


def test_split_groups_keeps_groups_whole():
    groups = [Group(group_id=f"g{i}", samples=[sample(f"g{i}-{j}", n, f"g{i}") for j in range(2)]) for i, n in
              enumerate([3, 1])]  # fmt: skip

    ranks = split_groups(groups, 2)

    assert [[g.group_id for g in r] for r in ranks] == [["g0"], ["g1"]]
