"""Per-token log-probabilities and entropy from vocabulary-parallel logits.

Each TP rank holds the logits of a contiguous slice of the vocabulary. The softmax statistics (max,
sum of exponentials, the target's logit) are combined across the TP group with Megatron's
`reduce_from_tensor_model_parallel_region` (forward all-reduce, backward identity), the same trick as
Megatron's vocab-parallel cross entropy, so gradients are exact and no rank materialises the full
vocabulary. With TP=1 the reductions are identities.

Temperature: the logits are divided by the rollout temperature first, so the result is the
log-probability of the distribution the engine sampled from (SGLang reports logprobs the same way).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def vocab_parallel_logprobs(
    logits: Tensor,  # [..., V_local] this TP rank's vocabulary slice (padding columns included)
    targets: Tensor,  # [...] int64 global token ids
    *,
    vocab_start: int,
    vocab_size: int,
    temperature: float = 1.0,
    tp_group: Any = None,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of each target token under softmax(logits / temperature), and optionally the entropy.

    Args:
        vocab_start: global id of this rank's first logit column.
        vocab_size: the real vocabulary; columns past it are TP padding and are ignored.
        tp_group: the TP process group, or None for a single rank.

    Returns:
        (logprobs [...], entropy [...] or None), float32, differentiable.
    """
    from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region

    def reduce_sum(t: Tensor) -> Tensor:
        return t if tp_group is None else reduce_from_tensor_model_parallel_region(t, group=tp_group)

    num_valid = max(0, min(logits.shape[-1], vocab_size - vocab_start))
    logits = logits[..., :num_valid].float() / temperature
    local_max = logits.max(dim=-1).values if num_valid else logits.new_full(logits.shape[:-1], -torch.inf)
    global_max = local_max.detach().clone()
    if tp_group is not None:
        torch.distributed.all_reduce(global_max, op=torch.distributed.ReduceOp.MAX, group=tp_group)
    shifted = logits - global_max.unsqueeze(-1)
    exp = shifted.exp()
    sum_exp = reduce_sum(exp.sum(dim=-1))
    log_z = sum_exp.log()

    local_ids = targets - vocab_start
    is_local = (local_ids >= 0) & (local_ids < num_valid)
    picked = shifted.gather(-1, local_ids.clamp(0, max(num_valid - 1, 0)).unsqueeze(-1)).squeeze(-1)
    target_logit = reduce_sum(torch.where(is_local, picked, torch.zeros_like(picked)))
    logprobs = target_logit - log_z
    if not with_entropy:
        return logprobs, None
    # H = log Z - E_p[shifted logit]
    entropy = log_z - reduce_sum((exp * shifted).sum(dim=-1)) / sum_exp
    return logprobs, entropy
