"""Masked reductions of per-token values [T] to a scalar loss, shared by every loss in `algorithms/`.

Reductions (names as in `algorithm.loss_reduction`):
- `token_mean`: sum over trained tokens / number of trained tokens (DAPO's token-level loss).
- `sample_mean`: mean over samples of each sample's token mean (GRPO's original 1/|o_i| form);
  samples without a trained token are left out of the mean.
- `token_sum_norm`: sum over trained tokens / a constant `loss_normaliser` (Dr.GRPO uses
  max_response_len * num_samples; the trainer may also pass a global token count gathered across
  data-parallel ranks and micro-batches to get an exact global token mean).

Masked-out tokens contribute nothing, even when their values are NaN or inf.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from slime_rl.errors import ConfigError

REDUCTIONS = ("token_mean", "sample_mean", "token_sum_norm")


def sample_index_from_lengths(lengths: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """Token-to-sample index [sum(lengths)] int64 for samples laid out one after another."""
    counts = torch.as_tensor(list(lengths), dtype=torch.long, device=device)  # [S]
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), counts)  # [T]


def _masked(values: Tensor, mask: Tensor) -> Tensor:
    """Values [T] with masked-out entries set to 0 (so NaN/inf there cannot leak)."""
    return torch.where(mask.bool(), values, torch.zeros_like(values))


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` [T] over tokens where `mask` [T] is set; 0 when no token is set."""
    count = mask.bool().sum().clamp_min(1)
    return _masked(values, mask).sum() / count


def per_sample_mean(values: Tensor, mask: Tensor, sample_index: Tensor, num_samples: int) -> tuple[Tensor, Tensor]:
    """Each sample's mean of `values` [T] over its trained tokens.

    Returns (means [S], counts [S]); a sample with no trained token has mean 0 and count 0.
    """
    sums = torch.zeros(num_samples, dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, sample_index, _masked(values, mask))  # [S]
    counts = torch.zeros(num_samples, dtype=values.dtype, device=values.device)
    counts = counts.index_add(0, sample_index, mask.to(values.dtype))  # [S]
    return sums / counts.clamp_min(1), counts


def reduce_loss(
    per_token: Tensor,
    mask: Tensor,
    *,
    reduction: str,
    sample_index: Tensor | None = None,
    num_samples: int | None = None,
    loss_normaliser: float | None = None,
) -> Tensor:
    """Reduce a per-token loss [T] to a scalar by `reduction` (see the module docstring).

    `sample_mean` needs `sample_index` [T] and `num_samples`; `token_sum_norm` needs `loss_normaliser`.
    """
    if reduction == "token_mean":
        return masked_mean(per_token, mask)
    if reduction == "sample_mean":
        if sample_index is None or num_samples is None:
            raise ValueError("reduction='sample_mean' needs sample_index and num_samples")
        means, counts = per_sample_mean(per_token, mask, sample_index, num_samples)  # [S], [S]
        return means.sum() / (counts > 0).sum().clamp_min(1)
    if reduction == "token_sum_norm":
        if loss_normaliser is None or loss_normaliser <= 0:
            raise ValueError(f"reduction='token_sum_norm' needs loss_normaliser > 0, got {loss_normaliser}")
        return _masked(per_token, mask).sum() / loss_normaliser
    raise ConfigError(f"algorithm.loss_reduction={reduction!r} is unknown; choose one of {sorted(REDUCTIONS)}")
