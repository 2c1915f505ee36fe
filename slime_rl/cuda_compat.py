"""What every process that runs a model on CUDA sets first (native engine, trainer ranks).

`avoid_per_shape_attention_plans`: PyTorch's cuDNN SDPA backend builds an execution plan for each new input
shape. Measured on an H100 (torch 2.11+cu130, bf16 toy model, 64 decode rows): a decode step at a KV
length the process had not seen took 78 ms median and up to 1.9 s, against 3.6 ms once seen and 2.7 ms
with the cuDNN backend off; a prefill at a new width took 80-156 ms against 4.6 ms. Rollout shapes change
every step (the KV length grows, the batch size moves) and training micro-batches vary in length, so the
cuDNN backend is turned off; the flash and memory-efficient SDPA kernels remain. On CPU it changes nothing.
"""

from __future__ import annotations

import torch


def avoid_per_shape_attention_plans() -> None:
    """Turn off the cuDNN SDPA backend for this process (see module docstring)."""
    torch.backends.cuda.enable_cudnn_sdp(False)
