"""Moving weights between HF safetensors files, a rank's `GPTModel` and the other ranks.

- `read_hf_tensors` / `write_hf_dir`: HF safetensors directory I/O.
- `load_hf_into_model`: every rank loads its TP shard of its pipeline stage from an HF directory.
- `gather_hf_state_dict`: collective over the data-parallel-rank-0 replica; global rank 0 receives
  the full model under HF names (used by weight publishing and HF export).

The naming and layout maths live in `hf_convert`; this module adds I/O and torch.distributed only.
Every rank reads the whole HF checkpoint and rank 0 holds the whole gathered model in host memory: fine
for the models this project trains on one node; streaming per layer is the next step for large models.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from slime_rl.trainer import hf_convert
from slime_rl.trainer.model import ArchSpec
from slime_rl.trainer.parallel import ParallelLayout

# Files of an HF model directory other than weights, copied along with exported weights.
HF_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)


def read_hf_tensors(model_dir: str | Path) -> dict[str, Tensor]:
    """All tensors of the `*.safetensors` files in `model_dir`, on CPU."""
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {model_dir}")
    tensors: dict[str, Tensor] = {}
    for file in files:
        tensors.update(load_file(str(file)))
    return tensors


def write_hf_dir(tensors: dict[str, Tensor], out_dir: str | Path, *, side_files_from: str | Path) -> Path:
    """Write `tensors` as `model.safetensors` plus the config/tokenizer files of `side_files_from`."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in HF_SIDE_FILES:
        src = Path(side_files_from) / name
        if src.exists() and src.resolve() != (out / name).resolve():
            shutil.copyfile(src, out / name)
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(contiguous, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def read_hf_config(model_dir: str | Path) -> object:
    """The transformers config of an HF model directory."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_dir))


@torch.no_grad()
def load_hf_into_model(model: torch.nn.Module, arch: ArchSpec, hf: dict[str, Tensor], layout: ParallelLayout) -> None:
    """Copy this rank's shard of the HF tensors `hf` into `model` (one pipeline stage, unwrapped)."""
    full = hf_convert.hf_to_megatron_full(hf, arch, layout.tp_size)
    params = dict(model.named_parameters())
    local = hf_convert.local_state_dict(
        full,
        arch,
        local_names=list(params),
        tp_rank=layout.tp_rank,
        tp_size=layout.tp_size,
        pp_rank=layout.pp_rank,
        pp_size=layout.pp_size,
        ep_rank=layout.ep_rank,
        ep_size=layout.ep_size,
    )
    for name, param in params.items():
        if param.shape != local[name].shape:
            raise ValueError(f"{name}: model expects {tuple(param.shape)}, checkpoint gives {tuple(local[name].shape)}")
        param.copy_(local[name])


def _stage_full_tensors(model: torch.nn.Module, arch: ArchSpec, layout: ParallelLayout) -> dict[str, Tensor]:
    """This stage's parameters, TP-gathered, with every expert-parallel rank's experts, under Megatron full names
    (on a DP rank other than 0, only the experts).

    Collective over the TP group and, for an MoE model, the expert-parallel group.
    """
    from megatron.core import parallel_state as mpu

    offset = hf_convert.stage_layers(arch, pp_rank=layout.pp_rank, pp_size=layout.pp_size).start
    expert_offsets = [hf_convert.expert_offset(arch, ep_rank=r, ep_size=layout.ep_size) for r in range(layout.ep_size)]
    out = {}
    for name, param in model.named_parameters():
        if name == "output_layer.weight" and arch.tie_word_embeddings:
            continue  # the last stage's copy of the tied embedding
        is_expert = hf_convert.is_expert_param(name)
        if layout.dp_rank != 0 and not is_expert:
            continue  # replica 0 sends the dense weights; the other first `ep_size` DP ranks only their experts
        local = param.detach().contiguous()
        if layout.tp_size > 1 and hf_convert.tp_split_dim(name) is not None:
            shards = [torch.empty_like(local) for _ in range(layout.tp_size)]
            tp_group = mpu.get_expert_tensor_parallel_group() if is_expert else mpu.get_tensor_model_parallel_group()
            dist.all_gather(shards, local, group=tp_group)
            full = hf_convert.unshard(name, shards)
        else:
            full = local
        if is_expert and layout.ep_size > 1:
            pieces = [torch.empty_like(full) for _ in range(layout.ep_size)]
            dist.all_gather(pieces, full.contiguous(), group=mpu.get_expert_model_parallel_group())
            for piece, experts in zip(pieces, expert_offsets, strict=True):
                out[hf_convert.to_global_name(name, offset, experts)] = piece
        else:
            out[hf_convert.to_global_name(name, offset)] = full
    return out


@torch.no_grad()
def gather_hf_state_dict(
    model: torch.nn.Module, arch: ArchSpec, layout: ParallelLayout, split_into: Tensor | None = None
) -> dict[str, Tensor] | None:
    """The full model under HF names on global rank 0 (CPU tensors); None on every other rank. On CPU at TP=1
    most are views of the parameters; the q/k/v split goes into `split_into` when given (a host tensor, see
    `hf_convert.megatron_full_to_hf`).

    Collective: every rank calls it. Ranks of data-parallel replicas other than 0 return at once, except, for
    an MoE model, the ranks that hold replica 0's other experts (the first `ep_size` DP ranks).
    """
    from megatron.core import parallel_state as mpu

    if layout.dp_rank >= layout.ep_size:
        return None
    stage = _stage_full_tensors(model, arch, layout)
    if layout.dp_rank != 0 or layout.tp_rank != 0:
        return None
    pp_group = mpu.get_pipeline_model_parallel_group()
    full: dict[str, Tensor] = {}
    for src_stage in range(layout.pp_size):
        is_src = src_stage == layout.pp_rank
        meta = [[(name, t.shape, t.dtype) for name, t in stage.items()]] if is_src else [None]
        src = dist.get_global_rank(pp_group, src_stage) if layout.pp_size > 1 else dist.get_rank()
        if layout.pp_size > 1:
            dist.broadcast_object_list(meta, src=src, group=pp_group)
        for name, shape, dtype in meta[0]:
            tensor = stage[name] if src_stage == layout.pp_rank else torch.empty(shape, dtype=dtype, device=_device())
            if layout.pp_size > 1:
                dist.broadcast(tensor, src=src, group=pp_group)
            if layout.pp_rank == 0:
                full[name] = tensor.cpu()
    if layout.pp_rank != 0:
        return None
    return hf_convert.megatron_full_to_hf(full, arch, split_into)


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
