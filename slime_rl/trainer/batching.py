"""Turning a list of `Sample`s into fixed-shape micro-batches for Megatron's schedules.

Layout contract: sample i (prompt P, response R tokens) becomes one row of `input_ids` holding its
first P + R - 1 tokens; the logits at positions P-1 .. P+R-2 predict the response tokens. Rows are
right-padded with token 0 to one sequence length for the whole batch, and every micro-batch of a batch
has the same number of rows (`micro_batch_rows`; extra rows are all padding): pipeline schedules
exchange activations of one fixed shape. Per-token tensors are flat, `[T]`, over the response tokens
of the micro-batch's samples in order; `token_slice` locates them in the flat `[T_batch]` arrays of the
whole batch.
"""

from __future__ import annotations

import math
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
    token_slice: slice  # these tokens' range in the batch's flat token arrays

    def to(self, device: torch.device) -> MicroBatch:
        """The same micro-batch with its tensors on `device`."""
        moved = {name: getattr(self, name).to(device) for name in ("input_ids", "position_ids", "targets")}
        moved |= {name: getattr(self, name).to(device) for name in ("rows", "cols")}
        return MicroBatch(**moved, num_samples=self.num_samples, token_slice=self.token_slice)


def seq_length(samples: list[Sample]) -> int:
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


def build_micro_batches(samples: list[Sample], *, micro_batch_size: int, seq_len: int) -> list[MicroBatch]:
    """Split `samples` (in order) into micro-batches of `micro_batch_size` rows padded to `seq_len`."""
    batches = []
    token_start = 0
    for first in range(0, len(samples), micro_batch_size):
        chunk = samples[first : first + micro_batch_size]
        input_ids = torch.zeros(micro_batch_size, seq_len, dtype=torch.long)
        rows, cols, targets = [], [], []
        for row, sample in enumerate(chunk):
            tokens = np.concatenate([sample.prompt_ids, sample.response_ids]).astype(np.int64)
            if len(tokens) - 1 > seq_len:
                raise ValueError(f"sample {sample.uid} has {len(tokens)} tokens; seq_len={seq_len} is too short")
            input_ids[row, : len(tokens) - 1] = torch.from_numpy(tokens[:-1])
            num_prompt, num_response = len(sample.prompt_ids), len(sample.response_ids)
            if num_response and not num_prompt:
                raise ValueError(f"sample {sample.uid} has no prompt token to predict its first response token from")
            cols.append(torch.arange(num_prompt - 1, num_prompt - 1 + num_response))
            rows.append(torch.full((num_response,), row))
            targets.append(torch.from_numpy(sample.response_ids.astype(np.int64)))
        num_tokens = sum(len(t) for t in targets)
        batches.append(
            MicroBatch(
                input_ids=input_ids,
                position_ids=torch.arange(seq_len).unsqueeze(0).expand(micro_batch_size, -1).contiguous(),
                targets=torch.cat(targets),
                rows=torch.cat(rows).long(),
                cols=torch.cat(cols).long(),
                num_samples=len(chunk),
                token_slice=slice(token_start, token_start + num_tokens),
            )
        )
        token_start += num_tokens
    return batches


def flat_response_array(samples: list[Sample], field: str) -> np.ndarray:
    """`field` (a per-response-token array of `Sample`) of every sample, concatenated: `[T_batch]`."""
    parts = [getattr(s, field) for s in samples]
    return np.concatenate(parts) if parts else np.zeros(0)


def split_flat(values: np.ndarray, samples: list[Sample]) -> list[np.ndarray]:
    """Inverse of `flat_response_array`: one array per sample."""
    ends = np.cumsum([len(s.response_ids) for s in samples])
    return np.split(values, ends[:-1]) if len(samples) else []
