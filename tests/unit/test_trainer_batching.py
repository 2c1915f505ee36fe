"""Micro-batch layout: which logits predict which response tokens, padding rows, flat token positions, and the
token-budget plan."""

from __future__ import annotations

import numpy as np
import torch

from slime_rl.trainer.batching import (
    build_micro_batches,
    micro_batch_rows,
    plan_micro_batches,
    seq_length,
    split_flat,
)
from slime_rl.types import Sample


def _sample(uid: str, prompt: list[int], response: list[int]) -> Sample:
    n = len(response)
    return Sample(
        uid=uid,
        group_id="g",
        index=0,
        prompt_ids=prompt,
        response_ids=response,
        rollout_logprobs=np.zeros(n),
        loss_mask=np.ones(n),
    )


def test_micro_batches_align_logits_positions_with_response_tokens():
    samples = [_sample("a", [5, 6], [7, 8, 9]), _sample("b", [4], [3]), _sample("c", [1, 2, 3], [])]
    assert seq_length(samples) == 4
    plan = plan_micro_batches(samples, max_rows=2)
    assert (plan.groups, plan.rows, plan.seq_len) == ([[0, 1], [2]], 2, 4)
    first, second = build_micro_batches(samples, plan)
    assert torch.equal(first.input_ids, torch.tensor([[5, 6, 7, 8], [4, 0, 0, 0]]))
    assert first.targets.tolist() == [7, 8, 9, 3]
    assert first.rows.tolist() == [0, 0, 0, 1] and first.cols.tolist() == [1, 2, 3, 0]
    assert first.token_index.tolist() == [0, 1, 2, 3] and first.num_samples == 2
    # The last micro-batch is padded to two rows; its sample has no response token.
    assert second.input_ids.shape == (2, 4) and second.num_samples == 1 and second.token_index.tolist() == []


def test_token_budget_sorts_by_length_and_pads_each_micro_batch_to_its_own_longest():
    # input lengths (prompt + response - 1): a 9, b 2, c 5, d 3, e 2
    samples = [
        _sample("a", [1, 2], [3] * 8),
        _sample("b", [1], [4, 5]),
        _sample("c", [1, 2, 3], [6, 7, 8]),
        _sample("d", [1, 2], [9, 9]),
        _sample("e", [1, 2], [5]),
    ]
    plan = plan_micro_batches(samples, max_rows=8, max_tokens=10)
    # longest first: a (9) alone (2 x 9 > 10); c (5) + d (3): 2 x 5 = 10; b (2) + e (2): 2 x 2
    assert (plan.groups, plan.rows, plan.seq_len) == ([[0], [2, 3], [1, 4]], None, None)
    mbs = build_micro_batches(samples, plan)
    assert [tuple(mb.input_ids.shape) for mb in mbs] == [(1, 9), (2, 5), (2, 2)]
    assert torch.equal(mbs[1].input_ids, torch.tensor([[1, 2, 3, 6, 7], [1, 2, 9, 0, 0]]))
    # flat token positions in batch order: a 0-7, b 8-9, c 10-12, d 13-14, e 15
    assert [mb.token_index.tolist() for mb in mbs] == [list(range(8)), [10, 11, 12, 13, 14], [8, 9, 15]]
    assert mbs[2].rows.tolist() == [0, 0, 1] and mbs[2].cols.tolist() == [0, 1, 1]
    assert sorted(i for mb in mbs for i in mb.token_index.tolist()) == list(range(16))  # every token once
    # max_rows still caps a micro-batch, and a budget smaller than a sample leaves that sample alone
    assert plan_micro_batches(samples, max_rows=1, max_tokens=100).groups == [[0], [2], [3], [1], [4]]
    assert plan_micro_batches(samples, max_rows=8, max_tokens=1).groups == [[0], [2], [3], [1], [4]]


def test_micro_batch_rows_uses_the_fewest_micro_batches_and_spreads_samples_evenly():
    assert micro_batch_rows(64, max_rows=128) == 64  # a small batch is not padded up to the maximum
    assert micro_batch_rows(256, max_rows=128) == 128
    assert micro_batch_rows(130, max_rows=128) == 65  # two micro-batches of 65, not 128 + 2 real rows
    assert micro_batch_rows(5, max_rows=2) == 2  # three micro-batches: one padding row in all
    assert micro_batch_rows(0, max_rows=4) == 1  # a DP rank without samples builds no micro-batch


def test_split_flat_returns_one_array_per_sample():
    samples = [_sample("a", [1], [2, 3]), _sample("b", [1], [4])]
    parts = split_flat(np.array([0.1, 0.2, 0.3]), samples)
    assert [p.tolist() for p in parts] == [[0.1, 0.2], [0.3]]
