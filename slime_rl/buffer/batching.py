"""Splitting one training batch across data-parallel ranks so every rank gets about the same token count.

Owns the partition only. Advantages, micro-batching and padding are the trainer's job; the order of items
within a rank follows the input order, so a rank's samples stay grouped as they came.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from slime_rl.types import Group, Sample


def partition_balanced(token_counts: Sequence[int], num_parts: int, *, equal_count: bool = True) -> list[list[int]]:
    """Split item indices into `num_parts` lists whose token sums are close (greedy longest-first, LPT).

    With `equal_count` every part also gets exactly `len(token_counts) / num_parts` items (Megatron's data
    parallel ranks must run the same number of samples); the length must then be a multiple of `num_parts`.
    Each list is in ascending index order. LPT puts the largest part within 4/3 of the optimum (Graham, 1969).
    """
    if num_parts < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    if equal_count and len(token_counts) % num_parts:
        raise ValueError(
            f"{len(token_counts)} items cannot be split evenly across {num_parts} data-parallel ranks; make the "
            "number of samples per step a multiple of the data-parallel size"
        )
    capacity = len(token_counts) // num_parts if equal_count else len(token_counts)
    parts: list[list[int]] = [[] for _ in range(num_parts)]
    heap = [(0, rank) for rank in range(num_parts)]  # (tokens so far, rank); full ranks leave the heap
    for index in sorted(range(len(token_counts)), key=lambda i: -token_counts[i]):
        load, rank = heapq.heappop(heap)
        parts[rank].append(index)
        if len(parts[rank]) < capacity:
            heapq.heappush(heap, (load + token_counts[index], rank))
    return [sorted(part) for part in parts]


def split_samples(samples: Sequence[Sample], dp_size: int) -> list[list[Sample]]:
    """One list per data-parallel rank, equal in sample count, balanced in prompt + response tokens."""
    parts = partition_balanced([s.num_tokens for s in samples], dp_size)
    return [[samples[i] for i in part] for part in parts]


def split_groups(groups: Sequence[Group], dp_size: int) -> list[list[Group]]:
    """One list per data-parallel rank, equal in group count, balanced in tokens; groups stay whole."""
    parts = partition_balanced([g.num_tokens for g in groups], dp_size)
    return [[groups[i] for i in part] for part in parts]
