"""From scored groups to per-rank `TrainBatch`es: group-relative advantages, then a token-balanced DP split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from slime_rl.algorithms.advantages import compute_advantages
from slime_rl.buffer.batching import partition_balanced
from slime_rl.config.algorithm import AlgorithmConfig
from slime_rl.types import Group, Sample, TrainBatch


def make_train_batches(
    groups: Sequence[Group], algorithm: AlgorithmConfig, *, dp_size: int, step: int
) -> list[TrainBatch]:
    """One `TrainBatch` per data-parallel rank. Advantages are computed over whole groups before the split."""
    samples: list[Sample] = [s for g in groups for s in g.samples]
    group_size = len(groups[0].samples) if groups else 1
    rewards = torch.tensor([s.reward or 0.0 for s in samples], dtype=torch.float32)
    advantages = compute_advantages(
        algorithm.advantage_estimator, rewards, group_size, normalize_std=algorithm.normalize_std
    ).numpy()
    parts = partition_balanced([s.num_tokens for s in samples], dp_size)
    return [TrainBatch(step=step, samples=[samples[i] for i in part], advantages=advantages[part]) for part in parts]


def make_sft_batches(samples: Sequence[Sample], *, dp_size: int, step: int) -> list[TrainBatch]:
    """Supervised batches (advantages unused, zero) split like RL batches."""
    parts = partition_balanced([s.num_tokens for s in samples], dp_size)
    return [
        TrainBatch(step=step, samples=[samples[i] for i in part], advantages=np.zeros(len(part), np.float32))
        for part in parts
    ]
