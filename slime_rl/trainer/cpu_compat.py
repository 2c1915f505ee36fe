"""Everything the trainer does differently when there is no CUDA device (REFERENCE.md §3).

The trainer runs one Megatron-core code path on GPU and CPU. Megatron hard-codes CUDA in a few places
(`torch.cuda.current_device()`, `device="cuda"`, `RotaryEmbedding.get_emb` moving `inv_freq`, grad
clipping asserting `torch.cuda.FloatTensor`, the MoE all-to-all dispatcher's CUDA streams). This module
owns the pieces that bridge that gap and nothing else:

- `SDPACoreAttention`: the core-attention module of our layer spec, on both devices. Megatron's local
  `DotProductAttention` needs fused CUDA softmax kernels; SDPA is a flash kernel on GPU and works on CPU.
- `device_scope`: on CPU, a scoped `TorchFunctionMode` that maps CUDA device arguments to CPU and stubs
  `torch.cuda.current_device`/`synchronize` while Megatron's DDP, optimizer and schedules run. This
  also covers RoPE's `inv_freq.to(torch.cuda.current_device())`, which runs inside the forward pass,
  and reports CPU tensors' `Tensor.type()` under their CUDA names, which the distributed optimizer
  requires. On GPU it does nothing.
- `optimizer_step`: Megatron's `clip_grad_by_total_norm_fp32` cannot run on CPU, so on CPU the
  optimizer is built with `clip_grad=0` and this function clips by the (Megatron-computed) global
  grad norm itself before `step_with_ready_grads`. On GPU it calls `optimizer.step()`.
- `moe_token_dispatcher`: MoE layers exchange tokens with all-to-all on GPU; Megatron's all-to-all dispatcher
  creates CUDA streams when it is built, so on CPU the all-gather dispatcher (the same routing) runs instead.

Not supported on CPU (the trainer raises `ConfigError`): the bf16/fp16 mixed-precision optimizer. Sequence
parallelism is not offered on either device.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode


def has_cuda() -> bool:
    """True when the trainer runs on a CUDA device (NCCL, CUDA tensors); False means the CPU path."""
    return torch.cuda.is_available()


def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # Megatron passes device indices as bare ints.
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments of torch calls to CPU; `Tensor.cuda()` becomes a no-op."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = dict(kwargs or {})
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # Megatron's distributed optimizer sorts parameters by `param.type()` and accepts CUDA names only.
            return func(*args).replace("torch.", "torch.cuda.", 1)
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


@contextlib.contextmanager
def device_scope() -> Iterator[None]:
    """Run Megatron calls that hard-code CUDA; on CPU their CUDA tensors land on CPU instead.

    Wrap Megatron's DDP and optimizer construction, `forward_backward_func` and optimizer steps in it.
    Patches are undone on exit, so code outside the scope sees the real `torch.cuda`.
    """
    if has_cuda():
        yield
        return
    saved = {name: getattr(torch.cuda, name) for name in ("current_device", "synchronize")}
    # The CPU device itself, not an index: autograd runs Megatron's backward functions (e.g. the MoE token
    # gather) outside this TorchFunctionMode, where `device=torch.cuda.current_device()` must still mean CPU.
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda device=None: None
    try:
        with _CudaToCpuMode():
            yield
    finally:
        for name, fn in saved.items():
            setattr(torch.cuda, name, fn)


def moe_token_dispatcher() -> str:
    """Megatron's `moe_token_dispatcher_type` for this device (see module docstring)."""
    return "alltoall" if has_cuda() else "allgather"


def optimizer_step(optimizer: Any, clip_grad: float) -> tuple[bool, float]:
    """One Megatron optimizer step with global grad-norm clipping; returns (success, grad norm).

    On CPU the optimizer must have been built with `clip_grad=0` (see module docstring); the clip is
    then applied here with the same formula as Megatron: grads *= min(1, clip / (norm + 1e-6)).
    """
    if has_cuda():
        success, grad_norm, _ = optimizer.step()
        return bool(success), float(grad_norm or 0.0)
    if optimizer.prepare_grads():  # found inf/nan: Megatron skips the step
        return False, math.nan
    grad_norm = float(optimizer.get_grad_norm() or 0.0)
    coeff = clip_grad / (grad_norm + 1e-6)
    if clip_grad > 0 and coeff < 1.0:
        # An MoE model's ChainedOptimizer holds one optimizer for the dense and one for the expert weights.
        parts = getattr(optimizer, "chained_optimizers", [optimizer])
        grads = [p.grad for part in parts for p in part.get_parameters() if p.grad is not None]
        torch._foreach_mul_(grads, coeff)
    return bool(optimizer.step_with_ready_grads()), grad_norm


def core_attention_class() -> type:
    """The `SDPACoreAttention` class, built lazily so importing this module does not import Megatron."""
    from megatron.core.transformer.module import MegatronModule

    class SDPACoreAttention(MegatronModule):
        """Causal core attention through `scaled_dot_product_attention` (GQA by head repetition).

        Contract of Megatron's core attention: q `[s, b, heads, d]`, k/v `[s, b, groups, d]` (this
        TP rank's share), returns `[s, b, heads * d]`. Sequences are right-padded, so a causal mask
        alone keeps real tokens from attending to padding.
        """

        def __init__(
            self,
            config: Any,
            layer_number: int,
            attn_mask_type: Any,
            attention_type: str,
            attention_dropout: float | None = None,
            softmax_scale: float | None = None,
            cp_comm_type: str | None = None,
            pg_collection: Any = None,
        ) -> None:
            super().__init__(config=config)
            self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)

        def forward(
            self,
            query: torch.Tensor,
            key: torch.Tensor,
            value: torch.Tensor,
            attention_mask: torch.Tensor | None,
            attn_mask_type: Any = None,
            attention_bias: torch.Tensor | None = None,
            packed_seq_params: Any = None,
        ) -> torch.Tensor:
            if packed_seq_params is not None or attention_bias is not None:
                raise NotImplementedError("SDPACoreAttention supports neither packed sequences nor attention bias")
            seq, batch, heads, dim = query.shape
            q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, h, s, d]
            if k.shape[1] != heads:
                k = k.repeat_interleave(heads // k.shape[1], dim=1)
                v = v.repeat_interleave(heads // v.shape[1], dim=1)
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale)
            return out.permute(2, 0, 1, 3).reshape(seq, batch, heads * dim)

    return SDPACoreAttention
