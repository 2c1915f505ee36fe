"""Outcome advantages from per-sample rewards: GRPO, Dr.GRPO, REINFORCE++-baseline (GSPO uses GRPO's).

Owns the per-sample advantage only. Broadcasting it to tokens (`advantages[sample_index]`) and
dropping zero-std groups (DAPO dynamic sampling) happen elsewhere.

`rewards` [N] is laid out group after group: samples `g * group_size .. (g + 1) * group_size - 1`
answer the same prompt. Standard deviations use Bessel's correction, as verl and slime do; a group of
one has std 0. An optional `valid` mask [N] leaves samples out of the statistics (a failed sample's
reward 0 is not a score and must not shift its group's mean); invalid samples get advantage 0.
"""

from collections.abc import Callable

import torch
from torch import Tensor

from slime_rl.errors import ConfigError


def _grouped(values: Tensor, group_size: int) -> Tensor:
    """View values [N] as [G, group_size]; raise if N is not a multiple of group_size."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if values.dim() != 1 or values.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size}, got shape {tuple(values.shape)}"
        )
    return values.view(-1, group_size)  # [G, group_size]


def _valid_mask(rewards: Tensor, valid: Tensor | None) -> Tensor:
    """`valid` [N] as floats (1 = the sample counts), all ones when None."""
    if valid is None:
        return torch.ones_like(rewards, dtype=torch.float32)
    if valid.shape != rewards.shape:
        raise ValueError(f"valid must have the rewards' shape {tuple(rewards.shape)}, got {tuple(valid.shape)}")
    return valid.float()


def _centred_and_std(values: Tensor, weights: Tensor, dim: int | None) -> tuple[Tensor, Tensor]:
    """(values - mean) * weights and the Bessel-corrected std over the entries with weight 1.

    Reduces over `dim` (keeping it) or over everything when None; the std is 0 with fewer than two entries.
    """
    count = weights.sum() if dim is None else weights.sum(dim=dim, keepdim=True)
    total = (values * weights).sum() if dim is None else (values * weights).sum(dim=dim, keepdim=True)
    centred = (values - total / count.clamp_min(1)) * weights
    squares = centred.square().sum() if dim is None else centred.square().sum(dim=dim, keepdim=True)
    std = torch.where(count > 1, (squares / (count - 1).clamp_min(1)).sqrt(), torch.zeros_like(squares))
    return centred, std


def grpo_advantages(
    rewards: Tensor, group_size: int, *, normalize_std: bool = True, eps: float = 1e-6, valid: Tensor | None = None
) -> Tensor:
    """GRPO group-normalised advantages (Shao et al. 2024, DeepSeekMath): (r - mean_g) / (std_g + eps).

    With `normalize_std=False` the rewards are only centred by their group mean. Returns [N].
    """
    weights = _grouped(_valid_mask(rewards, valid), group_size)  # [G, k]
    centred, std = _centred_and_std(_grouped(rewards.float(), group_size), weights, dim=1)  # [G, k], [G, 1]
    if normalize_std:
        centred = centred / (std + eps)
    return centred.reshape(-1)  # [N]


def dr_grpo_advantages(rewards: Tensor, group_size: int, *, valid: Tensor | None = None) -> Tensor:
    """Dr.GRPO advantages (Liu et al. 2025, "Understanding R1-Zero-Like Training"): r - mean_g, no std.

    Dr.GRPO also drops GRPO's per-response length normaliser; pair it with
    `reduction="token_sum_norm"` and a constant `loss_normaliser` (e.g. max_response_len * num_samples).
    Returns [N].
    """
    return grpo_advantages(rewards, group_size, normalize_std=False, valid=valid)


def reinforce_pp_advantages(
    rewards: Tensor, group_size: int, *, eps: float = 1e-6, valid: Tensor | None = None
) -> Tensor:
    """REINFORCE++-baseline advantages (Hu 2025, REINFORCE++): (r - mean_g) / (std_batch + eps).

    Centres by the group mean, then divides by the std of the centred values over the whole batch
    (global normalisation instead of GRPO's per-group std). Returns [N].
    """
    centred = grpo_advantages(rewards, group_size, normalize_std=False, valid=valid)  # [N]
    _, std = _centred_and_std(centred, _valid_mask(rewards, valid), dim=None)
    return centred / (std + eps)


AdvantageFn = Callable[[Tensor, int, bool, float, Tensor | None], Tensor]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {
    "grpo": lambda r, k, norm, eps, valid: grpo_advantages(r, k, normalize_std=norm, eps=eps, valid=valid),
    "gspo": lambda r, k, norm, eps, valid: grpo_advantages(r, k, normalize_std=norm, eps=eps, valid=valid),
    "dr_grpo": lambda r, k, norm, eps, valid: dr_grpo_advantages(r, k, valid=valid),
    "reinforce_pp": lambda r, k, norm, eps, valid: reinforce_pp_advantages(r, k, eps=eps, valid=valid),
}


def compute_advantages(
    name: str,
    rewards: Tensor,
    group_size: int,
    *,
    normalize_std: bool,
    eps: float = 1e-6,
    valid: Tensor | None = None,
) -> Tensor:
    """Per-sample advantages [N] by estimator name (`algorithm.advantage_estimator`).

    `normalize_std` applies to `grpo` and `gspo`; `dr_grpo` never divides by a std and
    `reinforce_pp` always divides by the batch std. `valid` [N] (bool) leaves samples out of every
    mean and std (failed samples, whose reward is not a score); their advantage is 0.
    """
    if name not in ADVANTAGE_ESTIMATORS:
        raise ConfigError(
            f"algorithm.advantage_estimator={name!r} is unknown; choose one of {sorted(ADVANTAGE_ESTIMATORS)}"
        )
    return ADVANTAGE_ESTIMATORS[name](rewards, group_size, normalize_std, eps, valid)
