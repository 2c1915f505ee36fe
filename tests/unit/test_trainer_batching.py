"""Micro-batch layout: which logits predict which response tokens, padding rows, flat token slices."""

from __future__ import annotations

import numpy as np
import torch

from slime_rl.trainer.batching import build_micro_batches, micro_batch_rows, seq_length, split_flat
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
    first, second = build_micro_batches(samples, micro_batch_size=2, seq_len=4)
    assert torch.equal(first.input_ids, torch.tensor([[5, 6, 7, 8], [4, 0, 0, 0]]))
    assert first.targets.tolist() == [7, 8, 9, 3]
    assert first.rows.tolist() == [0, 0, 0, 1] and first.cols.tolist() == [1, 2, 3, 0]
    assert first.token_slice == slice(0, 4) and first.num_samples == 2
    # The last micro-batch is padded to two rows; its sample has no response token.
    assert second.input_ids.shape == (2, 4) and second.num_samples == 1 and second.token_slice == slice(4, 4)


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
