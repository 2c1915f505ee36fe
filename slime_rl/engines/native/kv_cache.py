"""Preallocated ragged KV cache for continuous batching over an unmodified transformers model.

Owns K/V storage: per layer one `[slots, kv_heads, max_len, head_dim]` buffer pair. Running rows are
kept compact in slots `0..B-1` (the scheduler moves the last row into a freed slot), so a decode step
attends to the view `[:B, :, :L]` without gathering. Two modes, set before each forward:

- prefill (`begin_prefill`): rows `start..start+n` get K/V for positions `0..P` (right-padded prompts;
  K/V written at padded positions are never attended: decode masks by length and overwrites them).
- decode (`begin_decode`): row b writes one token at `positions[b]` and attends to `[0, L)`.

It does not decide which rows run or build attention masks (the runner does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


@dataclass
class _Step:
    """What the next forward writes: prefill rows `start..start+num_rows`, or decode at `positions`."""

    start: int = 0
    num_rows: int = 0
    positions: torch.Tensor | None = None  # int64 [B] in decode mode, None in prefill mode
    attend_len: int = 0  # L: keys returned per row


class _RaggedLayer(CacheLayerMixin):
    is_compileable = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, step: _Step) -> None:
        super().__init__()
        self.keys, self.values, self.step = keys, values, step
        self.rows = torch.arange(keys.shape[0], device=keys.device)
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Buffers are allocated up front; nothing to do."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.step
        end = step.start + step.num_rows
        if step.positions is None:  # prefill: key_states [n, kv, P, d]
            width = key_states.shape[2]
            self.keys[step.start : end, :, :width] = key_states
            self.values[step.start : end, :, :width] = value_states
            return self.keys[step.start : end, :, :width], self.values[step.start : end, :, :width]
        rows = self.rows[: step.num_rows]  # decode: key_states [B, kv, 1, d]
        self.keys[rows, :, step.positions] = key_states[:, :, 0]
        self.values[rows, :, step.positions] = value_states[:, :, 0]
        return self.keys[: step.num_rows, :, : step.attend_len], self.values[: step.num_rows, :, : step.attend_len]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.step.attend_len, 0

    def get_seq_length(self) -> int:
        return self.step.attend_len

    def get_max_length(self) -> int:
        return self.keys.shape[2]


class RaggedKVCache(Cache):
    """K/V for `num_slots` sequences of up to `max_len` tokens each, for all layers of one model."""

    def __init__(
        self,
        *,
        num_layers: int,
        num_slots: int,
        num_kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.step = _Step()
        shape = (num_slots, num_kv_heads, max_len, head_dim)
        layers = [
            _RaggedLayer(
                torch.zeros(shape, dtype=dtype, device=device),
                torch.zeros(shape, dtype=dtype, device=device),
                self.step,
            )
            for _ in range(num_layers)
        ]
        super().__init__(layers=layers)
        self.num_slots, self.max_len = num_slots, max_len

    def begin_prefill(self, start: int, num_rows: int, width: int) -> None:
        self.step.start, self.step.num_rows, self.step.positions, self.step.attend_len = start, num_rows, None, width

    def begin_decode(self, positions: torch.Tensor, attend_len: int) -> None:
        self.step.start, self.step.num_rows = 0, positions.shape[0]
        self.step.positions, self.step.attend_len = positions, attend_len

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot `src` into slot `dst` (compaction after a row leaves)."""
        for layer in self.layers:
            layer.keys[dst, :, :length] = layer.keys[src, :, :length]
            layer.values[dst, :, :length] = layer.values[src, :, :length]
