"""Outcome advantages from per-sample rewards: GRPO, Dr.GRPO, REINFORCE++-baseline (GSPO uses GRPO's).

Owns the per-sample advantage only. Broadcasting it to tokens (`advantages[sample_index]`) and
dropping zero-std groups (DAPO dynamic sampling) happen elsewhere.

`rewards` [N] is laid out group after group: samples `g * group_size .. (g + 1) * group_size - 1`
answer the same prompt. Standard deviations use Bessel's correction (`torch.std`), as verl and slime
do; a group of one has std 0.
"""

from collections.abc import Callable

from torch import Tensor

from slime_rl.errors import ConfigError


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """View rewards [N] as [G, group_size]; raise if N is not a multiple of group_size."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size}, got shape {tuple(rewards.shape)}"
        )
    return rewards.float().view(-1, group_size)  # [G, group_size]


def _std(values: Tensor, dim: int | None = None) -> Tensor:
    """Bessel-corrected std; 0 (not NaN) when there is a single value."""
    n = values.numel() if dim is None else values.shape[dim]
    correction = 1 if n > 1 else 0
    if dim is None:
        return values.std(correction=correction)
    return values.std(dim=dim, keepdim=True, correction=correction)


def grpo_advantages(rewards: Tensor, group_size: int, *, normalize_std: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO group-normalised advantages (Shao et al. 2024, DeepSeekMath): (r - mean_g) / (std_g + eps).

    With `normalize_std=False` the rewards are only centred by their group mean. Returns [N].
    """
    grouped = _grouped(rewards, group_size)  # [G, k]
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # [G, k]
    if normalize_std:
        centred = centred / (_std(grouped, dim=1) + eps)
    return centred.reshape(-1)  # [N]


def dr_grpo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """Dr.GRPO advantages (Liu et al. 2025, "Understanding R1-Zero-Like Training"): r - mean_g, no std.

    Dr.GRPO also drops GRPO's per-response length normaliser; pair it with
    `reduction="token_sum_norm"` and a constant `loss_normaliser` (e.g. max_response_len * num_samples).
    Returns [N].
    """
    return grpo_advantages(rewards, group_size, normalize_std=False)


def reinforce_pp_advantages(rewards: Tensor, group_size: int, *, eps: float = 1e-6) -> Tensor:
    """REINFORCE++-baseline advantages (Hu 2025, REINFORCE++): (r - mean_g) / (std_batch + eps).

    Centres by the group mean, then divides by the std of the centred values over the whole batch
    (global normalisation instead of GRPO's per-group std). Returns [N].
    """
    centred = grpo_advantages(rewards, group_size, normalize_std=False)  # [N]
    return centred / (_std(centred) + eps)


ADVANTAGE_ESTIMATORS: dict[str, Callable[[Tensor, int, bool, float], Tensor]] = {
    "grpo": lambda r, k, norm, eps: grpo_advantages(r, k, normalize_std=norm, eps=eps),
    "gspo": lambda r, k, norm, eps: grpo_advantages(r, k, normalize_std=norm, eps=eps),
    "dr_grpo": lambda r, k, norm, eps: dr_grpo_advantages(r, k),
    "reinforce_pp": lambda r, k, norm, eps: reinforce_pp_advantages(r, k, eps=eps),
}


def compute_advantages(
    name: str, rewards: Tensor, group_size: int, *, normalize_std: bool, eps: float = 1e-6
) -> Tensor:
    """Per-sample advantages [N] by estimator name (`algorithm.advantage_estimator`).

    `normalize_std` applies to `grpo` and `gspo`; `dr_grpo` never divides by a std and
    `reinforce_pp` always divides by the batch std.
    """
    if name not in ADVANTAGE_ESTIMATORS:
        raise ConfigError(
            f"algorithm.advantage_estimator={name!r} is unknown; choose one of {sorted(ADVANTAGE_ESTIMATORS)}"
        )
    return ADVANTAGE_ESTIMATORS[name](rewards, group_size, normalize_std, eps)
