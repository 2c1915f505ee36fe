"""Model runner: an HF causal LM plus its ragged KV cache; batched prefill and one-forward decode steps.

Owns the model object and the tensors fed to it (ids, per-row positions, 4D attention masks, the decode
attention's row buckets from ragged_attention.py).
It does not pick rows, sample or track requests (scheduler.py and sampling.py do). Only the model
thread calls it.

Flattened weight buckets (engines/tensor_bucket.py) are received straight into the model: a trainer sends the
same buckets (names, dtypes, shapes) at every publish, so a bucket layout whose tensors are whole parameters in
their own dtype gets a buffer kept for it (`bucket_buffer`), and `load_bucket` makes those parameters views of it
(`param.data = view`, no copy); the next bucket of that layout is broadcast into the parameters themselves. A
layout holding anything else (one expert's slice of a fused expert weight, another dtype, a tied parameter named
twice) is received into a scratch buffer and copied out of it. A per-tensor update is received into each
parameter it fills whole (`tensor_targets`), the rest into new tensors copied from.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Iterable, Sequence

import torch
from transformers import AutoModelForCausalLM

from slime_rl.cuda_compat import avoid_per_shape_attention_plans
from slime_rl.engines.native.kv_cache import RaggedKVCache
from slime_rl.engines.native.ragged_attention import ATTENTION_NAME, plan_buckets
from slime_rl.engines.tensor_bucket import byte_ranges, unflatten

logger = logging.getLogger(__name__)

# One expert's weight as checkpoints (and SGLang) name it; transformers 5 holds an MoE layer's experts fused, as
# `experts.gate_up_proj` [experts, 2 * intermediate, hidden] (gate rows first) and `experts.down_proj`.
_EXPERT_WEIGHT = re.compile(r"^(.+\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")

# A flattened bucket's layout: its tensors' names, dtypes and shapes, in order.
BucketLayout = tuple[tuple[str, ...], tuple[torch.dtype, ...], tuple[tuple[int, ...], ...]]


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
        # The buffer of each bucket layout that parameters may live in (`bucket_buffer`), and each adopted
        # parameter's layout (by id: tied parameters are one object under two names).
        self._bucket_buffers: dict[BucketLayout, torch.Tensor] = {}
        self._adopted_by: dict[int, BucketLayout] = {}
        self._scratch: torch.Tensor | None = None  # the buffer of buckets copied out of, reused
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
            param = self._checked_destination(name, tensor.shape)
            param.copy_(tensor.to(device=param.device, dtype=param.dtype))
            count += 1
        return count

    def bucket_buffer(self, layout: BucketLayout) -> torch.Tensor:
        """The uint8 buffer to receive a flattened bucket of `layout` into, then `load_bucket(layout, buffer)`.

        A layout whose every tensor fills a parameter whole, in its dtype (each parameter once), gets a buffer of
        its own, kept: the parameters become views of it, and later buckets of that layout arrive
        in place. Any other layout shares one scratch buffer, copied out of. ValueError for an unknown name, a
        shape unlike the model's or a misaligned tensor, before anything is received.
        """
        if layout in self._bucket_buffers:
            return self._bucket_buffers[layout]
        names, dtypes, shapes = layout
        ranges = byte_ranges(dtypes, shapes)
        num_bytes = ranges[-1][1] if ranges else 0
        params = [self._checked_destination(name, shape) for name, shape in zip(names, shapes, strict=True)]
        whole = all(name in self._params for name in names) and len({id(param) for param in params}) == len(params)
        if whole and all(param.dtype == dtype for param, dtype in zip(params, dtypes, strict=True)):
            self._bucket_buffers[layout] = torch.empty(num_bytes, dtype=torch.uint8, device=self.device)
            return self._bucket_buffers[layout]
        if self._scratch is None or self._scratch.numel() < num_bytes:
            self._scratch = torch.empty(num_bytes, dtype=torch.uint8, device=self.device)
        return self._scratch[:num_bytes]

    @torch.no_grad()
    def load_bucket(self, layout: BucketLayout, buffer: torch.Tensor) -> int:
        """Load a bucket received into `bucket_buffer(layout)`; returns how many tensors it held."""
        names, dtypes, shapes = layout
        tensors = unflatten(buffer, dtypes, shapes)
        if layout not in self._bucket_buffers:
            return self.load_weights(zip(names, tensors, strict=True))
        for name, tensor in zip(names, tensors, strict=True):
            param = self._params[name]
            if param.data_ptr() == tensor.data_ptr():
                continue  # received in place
            previous = self._adopted_by.get(id(param))
            if previous is not None and previous != layout:
                self._bucket_buffers.pop(previous, None)  # the trainer re-bucketed: the old buffer goes with its views
            param.data = tensor
            self._adopted_by[id(param)] = layout
        return len(names)

    def tensor_targets(self, layout: BucketLayout) -> list[torch.Tensor]:
        """Where to receive each tensor of a per-tensor update (one broadcast per name), then `load_tensors`: the
        parameter itself when the tensor fills it whole in its dtype (received in place), else a new tensor to copy
        from. ValueError as `bucket_buffer`, before anything is received."""
        names, dtypes, shapes = layout
        targets = []
        filled: set[int] = set()
        for name, dtype, shape in zip(names, dtypes, shapes, strict=True):
            param = self._checked_destination(name, shape)
            whole = name in self._params and id(param) not in filled and param.is_contiguous()
            targets.append(
                param.data if whole and param.dtype == dtype else torch.empty(shape, dtype=dtype, device=self.device)
            )
            filled.add(id(param))
        return targets

    @torch.no_grad()
    def load_tensors(self, names: Sequence[str], targets: Sequence[torch.Tensor]) -> int:
        """Load the tensors received into `tensor_targets(...)`: copy those not received in place."""
        for name, tensor in zip(names, targets, strict=True):
            param = self._checked_destination(name, tensor.shape)
            if param.data_ptr() != tensor.data_ptr():
                param.copy_(tensor.to(device=param.device, dtype=param.dtype))
        return len(names)

    @torch.no_grad()
    def release_targets(self, targets: Sequence[torch.Tensor]) -> None:
        """Receive no more into `targets` (a receive into them was abandoned and may still write): the parameters
        among them get storage of their own."""
        pointers = {target.data_ptr() for target in targets}
        for param in self._params.values():
            if param.data_ptr() in pointers:
                param.data = param.data.clone()

    @torch.no_grad()
    def release_bucket_buffer(self, layout: BucketLayout) -> None:
        """Receive no more into `bucket_buffer(layout)` (a receive into it was abandoned and may still write): its
        parameters get storage of their own, and the layout's next bucket gets a new buffer."""
        buffer = self._bucket_buffers.pop(layout, None)
        if buffer is None:
            self._scratch = None
            return
        storage = buffer.untyped_storage().data_ptr()
        for param in self._params.values():
            if param.untyped_storage().data_ptr() == storage:
                param.data = param.data.clone()
                self._adopted_by.pop(id(param), None)

    def _checked_destination(self, name: str, shape: Iterable[int]) -> torch.Tensor:
        """`_destination(name)`, or ValueError for an unknown name or a shape unlike the destination's."""
        param = self._destination(name)
        if param is None:
            raise ValueError(f"weight {name!r} is not a parameter of {type(self.model).__name__}")
        if tuple(param.shape) != tuple(shape):
            raise ValueError(f"weight {name!r}: shape {tuple(shape)} != model's {tuple(param.shape)}")
        return param

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
