"""From a step's group summaries to one `TrainShare` per data-parallel rank: group-relative advantages,
then a token-balanced DP split. The shares name samples by stream entry; each rank fetches the tokens from
the buffer itself, so the driver plans the step without holding them.

`partial_policy` (the `rollout.partial_policy` knob) decides what happens to response tokens that an
APRIL partial generated under weights older than the version its group was published with:
`recompute` and `tis` train on them (the trainer recomputes old logprobs; `tis` also weights by
pi_old / pi_rollout, configured in `algorithm`), `mask_stale` has the rank zero their loss mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from slime_rl.algorithms.advantages import compute_advantages
from slime_rl.buffer.batching import partition_balanced
from slime_rl.buffer.store import Batch
from slime_rl.config.algorithm import AlgorithmConfig
from slime_rl.types import Sample, TrainBatch, TrainShare


def plan_train_shares(
    batch: Batch, algorithm: AlgorithmConfig, *, dp_size: int, step: int, partial_policy: str = "recompute"
) -> list[TrainShare]:
    """One `TrainShare` per data-parallel rank. Advantages are computed over whole groups before the split.

    Each share lists only the entries its samples come from; with `partial_policy="mask_stale"` it carries
    each entry's publish version (`Batch.versions`) for the rank to mask older tokens.
    """
    summaries = batch.summaries
    refs = [(e, j) for e, summary in enumerate(summaries) for j in range(len(summary.rewards))]
    group_size = len(summaries[0].rewards) if summaries else 1
    rewards = torch.tensor([r for s in summaries for r in s.rewards], dtype=torch.float32)
    # A failed sample's reward 0 is not a score: it stays out of its group's mean and std.
    scored = torch.tensor([ok for s in summaries for ok in s.scored], dtype=torch.bool)
    advantages = compute_advantages(
        algorithm.advantage_estimator, rewards, group_size, normalize_std=algorithm.normalize_std, valid=scored
    ).numpy()
    parts = partition_balanced([n for s in summaries for n in s.num_tokens], dp_size)
    shares = []
    for part in parts:
        entries = sorted({refs[i][0] for i in part})
        local = {e: k for k, e in enumerate(entries)}
        shares.append(
            TrainShare(
                step=step,
                entry_ids=[batch.entry_ids[e] for e in entries],
                samples=[(local[refs[i][0]], refs[i][1]) for i in part],
                advantages=advantages[part],
                mask_before=[batch.versions[e] for e in entries] if partial_policy == "mask_stale" else None,
            )
        )
    return shares


def make_sft_batches(samples: Sequence[Sample], *, dp_size: int, step: int) -> list[TrainBatch]:
    """Supervised batches (advantages unused, zero) split like RL batches."""
    parts = partition_balanced([s.num_tokens for s in samples], dp_size)
    return [
        TrainBatch(step=step, samples=[samples[i] for i in part], advantages=np.zeros(len(part), np.float32))
        for part in parts
    ]
