"""Model runner: an HF causal LM plus its ragged KV cache; batched prefill and one-forward decode steps.

Owns the model object and the tensors fed to it (ids, per-row positions, 4D attention masks, the decode
attention's row buckets from ragged_attention.py).
It does not pick rows, sample or track requests (scheduler.py and sampling.py do). Only the model
thread calls it.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterable

import torch
from transformers import AutoModelForCausalLM

from slime_rl.cuda_compat import avoid_per_shape_attention_plans
from slime_rl.engines.native.kv_cache import RaggedKVCache
from slime_rl.engines.native.ragged_attention import ATTENTION_NAME, plan_buckets

logger = logging.getLogger(__name__)

# One expert's weight as checkpoints (and SGLang) name it; transformers 5 holds an MoE layer's experts fused, as
# `experts.gate_up_proj` [experts, 2 * intermediate, hidden] (gate rows first) and `experts.down_proj`.
_EXPERT_WEIGHT = re.compile(r"^(.+\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """`auto` is float32 on CPU and bfloat16 on CUDA; otherwise a torch dtype name such as `float16`."""
    if name == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype={name!r} is not a torch dtype; use auto, float32, bfloat16 or float16")
    return dtype


class ModelRunner:
    """Runs `model_path` on `device` with room for `num_slots` sequences of `max_len` tokens each."""

    def __init__(self, model_path: str, *, device: str, dtype: torch.dtype, num_slots: int, max_len: int) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        if self.device.type == "cuda":
            avoid_per_shape_attention_plans()
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation=ATTENTION_NAME)
        self.model.to(self.device).eval()
        config = self.model.config
        self.vocab_size = int(config.vocab_size)
        self.max_len = min(max_len, int(getattr(config, "max_position_embeddings", max_len)))
        if self.max_len < max_len:
            logger.info(
                "max_context_len=%d exceeds the model's %d positions; serving %d tokens per sequence",
                max_len,
                self.max_len,
                self.max_len,
            )
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.cache = RaggedKVCache(
            num_layers=config.num_hidden_layers,
            num_slots=num_slots,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            max_len=self.max_len,
            head_dim=head_dim,
            dtype=dtype,
            device=self.device,
        )
        self._decoder = self.model.get_decoder()
        self._lm_head = self.model.get_output_embeddings()
        self._params = dict(self.model.named_parameters(remove_duplicate=False))
        # transformers 5.2x renamed `past_key_values` to `cache` (the old name goes in 5.40).
        self._cache_kwarg = (
            "cache" if "cache" in inspect.signature(self._decoder.forward).parameters else "past_key_values"
        )

    def _forward(
        self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, **attention
    ) -> torch.Tensor:
        cache = {self._cache_kwarg: self.cache}
        out = self._decoder(
            input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True, **cache, **attention
        )
        return out.last_hidden_state

    @torch.inference_mode()
    def prefill(self, start: int, prompts: list[list[int]]) -> torch.Tensor:
        """Write K/V of `prompts` into slots `start..start+n`; return logits [n, V] at each prompt's last token."""
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        width = int(lengths.max())
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            ids[i, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        positions = torch.arange(width, device=self.device).expand(len(prompts), width)
        # Right padding: attention is causal (ragged_attention's `causal_prefill`), so real tokens never see the
        # padding after them and no mask is built.
        self.cache.begin_prefill(start, len(prompts), width)
        hidden = self._forward(ids.to(self.device), positions, None, causal_prefill=True)
        last = hidden[torch.arange(len(prompts), device=self.device), lengths - 1]
        return self._lm_head(last)

    @torch.inference_mode()
    def decode(self, tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One token for each of rows `0..B-1`: `tokens[b]` sits at `positions[b]`. Returns logits [B, V]."""
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        attend_len = max(positions) + 1
        beyond = torch.arange(attend_len, device=self.device)[None, :] > pos[:, None]  # [B, L]
        # An additive mask: SDPA's CPU kernel runs about 1.4x faster on it than on a boolean one.
        mask = torch.zeros(beyond.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(beyond, torch.finfo(self.dtype).min)
        self.cache.begin_decode(pos, attend_len)
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        buckets = plan_buckets([p + 1 for p in positions], self.device)
        hidden = self._forward(ids, pos[:, None], mask[:, None, None, :], decode_buckets=buckets)
        return self._lm_head(hidden[:, 0])

    def move_row(self, src: int, dst: int, length: int) -> None:
        self.cache.move_row(src, dst, length)

    @torch.inference_mode()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy HF-named tensors into the model in place; returns how many were loaded.

        Raises ValueError on an unknown name or a shape mismatch (before or after partial loading: the caller
        treats a failed update as fatal for the weight version).
        """
        count = 0
        for name, tensor in named_tensors:
            param = self._destination(name)
            if param is None:
                raise ValueError(f"weight {name!r} is not a parameter of {type(self.model).__name__}")
            if tuple(param.shape) != tuple(tensor.shape):
                raise ValueError(f"weight {name!r}: shape {tuple(tensor.shape)} != model's {tuple(param.shape)}")
            param.copy_(tensor.to(device=param.device, dtype=param.dtype))
            count += 1
        return count

    def _destination(self, name: str) -> torch.Tensor | None:
        """The parameter HF-named weight `name` fills: itself, or its expert's slice of a fused expert weight."""
        if name in self._params:
            return self._params[name]
        match = _EXPERT_WEIGHT.match(name)
        if match is None:
            return None
        experts, index, projection = match[1], int(match[2]), match[3]
        if projection == "down_proj":
            fused = self._params.get(f"{experts}.down_proj")
            return fused[index] if fused is not None else None
        fused = self._params.get(f"{experts}.gate_up_proj")
        if fused is None:
            return None
        gate, up = fused[index].chunk(2)
        return gate if projection == "gate_proj" else up
