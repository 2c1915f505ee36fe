"""The model's parameters in one contiguous buffer, with room for the copies publishing makes.

Megatron's DDP does this itself with the distributed optimizer (`_ParamAndGradBuffer.param_data`); without it,
every parameter has its own storage. Publishing is why we want one buffer either way: the HF tensors the
gather returns are views of the parameters wherever the layouts agree, and views that lie back to back go to
the engines as flattened buckets straight from this memory (weight_sync.py), with no packing copy. The one
copy the gather makes at TP=1 (q/k/v split out of Megatron's fused rows, hf_convert.py) can land in `spare`
elements kept right after the parameters, so that it continues their run. Only where the parameters live
changes: the `Parameter` objects, their attributes and values stay, so call it before DDP and the optimizer
take references.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def move_into_buffer(params: Sequence[torch.nn.Parameter], spare: int = 0) -> torch.Tensor:
    """Make each of `params` (one dtype and device, each once) a view of one new flat buffer, in the order
    given, followed by `spare` unused elements; returns the buffer."""
    if len({(p.dtype, p.device) for p in params}) > 1 or len({id(p) for p in params}) != len(params):
        raise ValueError("move_into_buffer takes distinct parameters of one dtype and device")
    buffer = torch.empty(sum(p.numel() for p in params) + spare, dtype=params[0].dtype, device=params[0].device)
    offset = 0
    for param in params:
        view = buffer[offset : offset + param.numel()].view(param.shape)
        view.copy_(param)
        param.data = view
        offset += param.numel()
    return buffer
