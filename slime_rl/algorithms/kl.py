"""Per-token estimators of KL(pi || pi_ref) from sampled-token logprobs (Schulman 2020, "Approximating KL").

With log_ratio = logprobs - ref_logprobs, on tokens sampled from pi:
- k1 = log_ratio: unbiased, high variance, can be negative.
- k2 = 0.5 * log_ratio^2: biased, low variance, >= 0.
- k3 = exp(-log_ratio) + log_ratio - 1: unbiased, low variance, >= 0.
Reducing over tokens is `reduction.reduce_loss`'s job.
"""

import torch
from torch import Tensor

from slime_rl.errors import ConfigError

KL_KINDS = ("k1", "k2", "k3")


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str) -> Tensor:
    """Per-token KL estimate [T] of the policy against the reference (k1, k2 or k3, Schulman 2020).

    Gradients flow through `logprobs` only; `ref_logprobs` is detached.
    """
    log_ratio = logprobs - ref_logprobs.detach()  # [T] log pi - log pi_ref
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        # exp(ref - logp) - (ref - logp) - 1; clamp the exponent so a far-off token cannot overflow.
        neg = (-log_ratio).clamp(-20.0, 20.0)
        return torch.exp(neg) - neg - 1.0
    raise ConfigError(f"algorithm.kl_type={kind!r} is unknown; choose one of {sorted(KL_KINDS)}")
