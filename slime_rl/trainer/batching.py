"""Turning a list of `Sample`s into micro-batches for Megatron's schedules.

Layout contract: sample i (prompt P, response R tokens) becomes one row of `input_ids` holding its
first P + R - 1 tokens; the logits at positions P-1 .. P+R-2 predict the response tokens. Rows are
right-padded with token 0. Per-token tensors are flat, `[T]`, over the response tokens of the
micro-batch's samples in its row order; `token_index` locates them in the flat `[T_batch]` arrays of
the whole batch (samples in batch order, `flat_response_array`).

Two plans (`plan_micro_batches`):
- fixed shape (default): samples in batch order, the same number of rows in every micro-batch
  (`micro_batch_rows`; extra rows are all padding), padded to the batch's longest sample: pipeline
  schedules exchange activations of one shape.
- token budget (`trainer.max_tokens_per_micro_batch`, slime's dynamic batch size): samples sorted by
  length, longest first, fill micro-batches while rows x longest stays within the budget, and each is
  padded only to its own longest row. A long-tail batch then pays for its few long samples once instead
  of padding every row to them. Pipeline schedules exchange each micro-batch's shape first
  (Megatron's `variable_seq_lengths`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from slime_rl.types import Sample


@dataclass(slots=True, kw_only=True)
class MicroBatch:
    """One micro-batch; `rows`/`cols` pick the logits that predict each response token."""

    input_ids: Tensor  # int64 [B, S]
    position_ids: Tensor  # int64 [B, S]
    targets: Tensor  # int64 [T] response token ids
    rows: Tensor  # int64 [T] row of each response token (= its sample's index within the micro-batch)
    cols: Tensor  # int64 [T] position whose logits predict it
    num_samples: int  # real (non-padding) rows
    token_index: Tensor  # int64 [T] these tokens' positions in the batch's flat token arrays
    padding_mask: Tensor  # bool [B, S], True at padding positions (Megatron's MoE routers leave them out)

    def to(self, device: torch.device) -> MicroBatch:
        """The same micro-batch with its tensors on `device`."""
        moved = {name: getattr(self, name).to(device) for name in ("input_ids", "position_ids", "targets")}
        moved |= {name: getattr(self, name).to(device) for name in ("rows", "cols", "padding_mask")}
        return MicroBatch(**moved, num_samples=self.num_samples, token_index=self.token_index)


@dataclass(frozen=True, slots=True)
class MicroBatchPlan:
    """Which samples (batch indices, in row order) go into each micro-batch, and the padded shape: fixed
    `rows` x `seq_len` for every micro-batch, or None for each micro-batch's own (its samples, its longest)."""

    groups: list[list[int]]
    rows: int | None
    seq_len: int | None


def seq_length(samples: Sequence[Sample]) -> int:
    """Padded input length for `samples`: the longest prompt + response, minus the final token."""
    return max(1, max((s.num_tokens - 1 for s in samples), default=1))


def micro_batch_rows(num_samples: int, max_rows: int) -> int:
    """Rows per micro-batch for a batch of `num_samples`: the fewest micro-batches of at most `max_rows`,
    with the samples spread evenly over them, so a batch has fewer padding rows than micro-batches.

    A fixed `max_rows` would pad a small batch (a warm-up batch, a DP rank's share) up to it, and the padding
    rows cost as much compute as real ones: 64 samples under `micro_batch_size=128` ran 128 rows.
    """
    num_micro_batches = max(1, math.ceil(num_samples / max_rows))
    return max(1, math.ceil(num_samples / num_micro_batches))


def plan_micro_batches(samples: Sequence[Sample], *, max_rows: int, max_tokens: int | None = None) -> MicroBatchPlan:
    """The micro-batches of `samples`: fixed shape without `max_tokens`, else by token budget (module doc).

    Under a budget a micro-batch holds at most `max_rows` samples and rows x longest input <= `max_tokens`
    input tokens, padding included; a sample longer than the budget alone gets a micro-batch of its own.
    """
    if max_tokens is None:
        rows = micro_batch_rows(len(samples), max_rows)
        groups = [list(range(first, min(first + rows, len(samples)))) for first in range(0, len(samples), rows)]
        return MicroBatchPlan(groups=groups, rows=rows, seq_len=seq_length(samples))
    lengths = [seq_length([s]) for s in samples]
    groups: list[list[int]] = []
    for i in sorted(
        range(len(samples)), key=lambda i: (-lengths[i], i)
    ):  # longest first: a group's first is its longest
        group = groups[-1] if groups else None
        if group is None or len(group) >= max_rows or (len(group) + 1) * lengths[group[0]] > max_tokens:
            groups.append([i])
        else:
            group.append(i)
    return MicroBatchPlan(groups=groups, rows=None, seq_len=None)


def plan_shape(plan: MicroBatchPlan, samples: Sequence[Sample]) -> tuple[int, int, int]:
    """(micro-batches, rows, input length): the fewest of each that hold every micro-batch of `plan`."""
    rows = plan.rows or max((len(group) for group in plan.groups), default=1)
    return len(plan.groups), rows, plan.seq_len or seq_length(samples)


def padded_plan(plan: MicroBatchPlan, num_micro_batches: int, rows: int, seq_len: int) -> MicroBatchPlan:
    """`plan` at one fixed shape, with empty micro-batches (padding rows only) up to `num_micro_batches`."""
    empty: list[list[int]] = [[] for _ in range(num_micro_batches - len(plan.groups))]
    return MicroBatchPlan(groups=plan.groups + empty, rows=rows, seq_len=seq_len)


def build_micro_batches(samples: Sequence[Sample], plan: MicroBatchPlan) -> list[MicroBatch]:
    """The micro-batches `plan` lays `samples` out in (padded per the plan's shape)."""
    lengths = np.array([len(s.response_ids) for s in samples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    batches = []
    for group in plan.groups:
        chunk = [samples[i] for i in group]
        num_rows = plan.rows or len(chunk)
        seq_len = plan.seq_len or seq_length(chunk)
        input_ids = torch.zeros(num_rows, seq_len, dtype=torch.long)
        padding_mask = torch.ones(num_rows, seq_len, dtype=torch.bool)
        rows, cols, targets = [], [], []
        for row, sample in enumerate(chunk):
            tokens = np.concatenate([sample.prompt_ids, sample.response_ids]).astype(np.int64)
            if len(tokens) - 1 > seq_len:
                raise ValueError(f"sample {sample.uid} has {len(tokens)} tokens; seq_len={seq_len} is too short")
            input_ids[row, : len(tokens) - 1] = torch.from_numpy(tokens[:-1])
            padding_mask[row, : len(tokens) - 1] = False
            num_prompt, num_response = len(sample.prompt_ids), len(sample.response_ids)
            if num_response and not num_prompt:
                raise ValueError(f"sample {sample.uid} has no prompt token to predict its first response token from")
            cols.append(torch.arange(num_prompt - 1, num_prompt - 1 + num_response))
            rows.append(torch.full((num_response,), row))
            targets.append(torch.from_numpy(sample.response_ids.astype(np.int64)))
        token_index = [torch.arange(offsets[i], offsets[i + 1]) for i in group]
        batches.append(
            MicroBatch(
                input_ids=input_ids,
                position_ids=torch.arange(seq_len).unsqueeze(0).expand(num_rows, -1).contiguous(),
                targets=_cat_long(targets),
                rows=_cat_long(rows),
                cols=_cat_long(cols),
                num_samples=len(chunk),
                token_index=_cat_long(token_index),
                padding_mask=padding_mask,
            )
        )
    return batches


def _cat_long(parts: list[Tensor]) -> Tensor:
    """`parts` concatenated as int64; empty for an empty micro-batch."""
    return torch.cat(parts).long() if parts else torch.zeros(0, dtype=torch.long)


def flat_response_array(samples: list[Sample], field: str) -> np.ndarray:
    """`field` (a per-response-token array of `Sample`) of every sample, concatenated: `[T_batch]`."""
    parts = [getattr(s, field) for s in samples]
    return np.concatenate(parts) if parts else np.zeros(0)


def split_flat(values: np.ndarray, samples: list[Sample]) -> list[np.ndarray]:
    """Inverse of `flat_response_array`: one array per sample."""
    ends = np.cumsum([len(s.response_ids) for s in samples])
    return np.split(values, ends[:-1]) if len(samples) else []
