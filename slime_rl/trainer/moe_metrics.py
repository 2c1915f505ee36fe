"""Router metrics of an MoE model for one optimizer step: the load-balancing loss and each expert's token share.

The load-balancing loss is Megatron's own (its routers record it per layer and micro-batch in the MoE logging
tracker, divided by its coefficient); the token counts come from a forward hook on every router, which sees
each token's chosen experts. Both cover the real tokens of training forward passes only: padding positions
(the trainer passes Megatron their mask) and the no-grad log-prob passes are left out.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from slime_rl.trainer.parallel import ParallelLayout


class ExpertLoad:
    """Counts routed tokens per expert on this rank and reports a step's router metrics (collective)."""

    def __init__(self, model: torch.nn.Module, num_experts: int) -> None:
        from megatron.core.transformer.moe.router import TopKRouter

        self.tokens = torch.zeros(num_experts, dtype=torch.float64)
        for module in model.modules():
            if isinstance(module, TopKRouter):
                module.register_forward_hook(self._count, with_kwargs=True)

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: tuple) -> None:
        if not torch.is_grad_enabled():
            return
        _, routing_map = output  # [tokens, num_experts], True where a token goes to an expert
        padding_mask = args[1] if len(args) > 1 else kwargs.get("padding_mask")  # [seq, batch], True = padding
        if padding_mask is not None:
            routing_map = routing_map[~padding_mask.reshape(-1)]
        self.tokens += routing_map.sum(dim=0).to(self.tokens)

    def step_metrics(self, layout: ParallelLayout, num_micro_batches: int, num_layers: int) -> dict[str, float]:
        """`train/moe_*` metrics of the step just run (the same on every rank); resets the counts.

        `moe_load_balancing_loss` is the mean over layers, micro-batches and DP ranks; `moe_load_max_over_mean`
        is the busiest expert's tokens over the mean (1.0 = balanced); `moe_token_share_expert_{e}` sums to 1.
        """
        from megatron.core import parallel_state as mpu
        from megatron.core.transformer.moe.moe_utils import (
            clear_aux_losses_tracker,
            get_moe_layer_wise_logging_tracker,
        )

        tracked = get_moe_layer_wise_logging_tracker().get("load_balancing_loss")
        loss_sum = float(tracked["values"].sum()) if tracked is not None else 0.0
        totals = torch.cat([torch.tensor([loss_sum], dtype=torch.float64), self.tokens])
        dist.all_reduce(totals, group=mpu.get_data_parallel_group())  # EP ranks are DP ranks
        if layout.pp_size > 1:  # each stage routes through its own layers
            dist.all_reduce(totals, group=mpu.get_pipeline_model_parallel_group())
        clear_aux_losses_tracker()
        self.tokens.zero_()
        loss = float(totals[0]) / (num_layers * max(num_micro_batches, 1) * layout.dp_size)
        tokens = totals[1:]
        share = tokens / tokens.sum().clamp(min=1.0)
        metrics = {
            "train/moe_load_balancing_loss": loss,
            "train/moe_load_max_over_mean": float(tokens.max() / tokens.mean().clamp(min=1e-12)),
        }
        return metrics | {f"train/moe_token_share_expert_{e}": float(s) for e, s in enumerate(share.tolist())}
