"""HuggingFace <-> Megatron-core weight names, layouts and tensor-parallel sharding (pure tensor code).

Three layers of naming, each a `dict[str, Tensor]`:
- HF: `model.layers.{i}.self_attn.q_proj.weight`, ... (Llama / Qwen2 / Qwen3 / Qwen3-MoE).
- Megatron *full*: names of the local-spec `GPTModel` with global layer and expert indices and unsharded
  tensors (vocabulary rows padded to a multiple of the TP size).
- Megatron *local*: one rank's `model.state_dict()` keys (layer indices local to its pipeline stage, expert
  indices local to its expert-parallel rank) and its TP shard of each tensor.

Layouts (REFERENCE.md §3): `linear_qkv` rows are `[groups, q_per_group + 2, head_dim]` (the queries of a
KV group, then its key, then its value); `linear_fc1` rows are `[gate; up]` *per TP rank*. No I/O and
no torch.distributed here; `weights.py` moves tensors between ranks and files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from slime_rl.trainer.model import ArchSpec

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^(.+\.local_experts\.)(\d+)(\..+)$")

# Megatron per-layer suffix -> HF per-layer suffix, for tensors that map one to one.
_DIRECT = {
    "input_layernorm.weight": "input_layernorm.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
}
_MOE_ROUTER = {"mlp.router.weight": "mlp.gate.weight"}  # [experts, hidden], the same on every rank
# TP split dimension of each Megatron tensor (absent = replicated).
_COLUMN = ("linear_qkv.weight", "linear_qkv.bias", "linear_fc1.weight", "word_embeddings.weight", "output_layer.weight")
_ROW = ("linear_proj.weight", "linear_fc2.weight")
# Qwen3's per-head q/k RMSNorm weights ([head_dim], the same on every TP rank).
_QK_NORM = {
    "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
}


def _direct(arch: ArchSpec) -> dict[str, str]:
    return _DIRECT | (_MOE_ROUTER if arch.moe is not None else {}) | (_QK_NORM if arch.qk_layernorm else {})


def _mlps(arch: ArchSpec, layer: int) -> list[tuple[str, str]]:
    """(Megatron, HF) name prefixes of layer `layer`'s SwiGLU MLPs: the dense one, or every expert's."""
    if arch.moe is None:
        return [(f"decoder.layers.{layer}.mlp.", f"model.layers.{layer}.mlp.")]
    return [
        (f"decoder.layers.{layer}.mlp.experts.local_experts.{e}.", f"model.layers.{layer}.mlp.experts.{e}.")
        for e in range(arch.moe.num_experts)
    ]


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])]) if rows > t.shape[0] else t


def hf_to_megatron_full(hf: Mapping[str, Tensor], arch: ArchSpec, tp_size: int) -> dict[str, Tensor]:
    """Megatron full tensors (global layer names, vocab padded for `tp_size`) from HF tensors."""
    vocab = arch.padded_vocab_size(tp_size)
    groups, dim = arch.num_kv_heads, arch.head_dim
    out = {
        "embedding.word_embeddings.weight": _pad_rows(hf["model.embed_tokens.weight"], vocab),
        "decoder.final_layernorm.weight": hf["model.norm.weight"],
    }
    if not arch.tie_word_embeddings:
        out["output_layer.weight"] = _pad_rows(hf["lm_head.weight"], vocab)
    for i in range(arch.num_layers):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        for meg, name in _direct(arch).items():
            out[dst + meg] = hf[src + name]
        for kind in ("weight", "bias") if arch.qkv_bias else ("weight",):
            q, k, v = (hf[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv")
            tail = q.shape[1:]
            per_group = [t.reshape(groups, -1, dim, *tail) for t in (q, k, v)]  # q_per_group, 1, 1 heads
            qkv = torch.cat(per_group, dim=1)
            out[f"{dst}self_attention.linear_qkv.{kind}"] = qkv.reshape(-1, *tail)
        for meg_mlp, hf_mlp in _mlps(arch, i):
            out[meg_mlp + "linear_fc1.weight"] = torch.cat(
                [hf[hf_mlp + "gate_proj.weight"], hf[hf_mlp + "up_proj.weight"]]
            )
            out[meg_mlp + "linear_fc2.weight"] = hf[hf_mlp + "down_proj.weight"]
    return out


def megatron_full_to_hf(
    meg: Mapping[str, Tensor], arch: ArchSpec, split_into: Tensor | None = None
) -> dict[str, Tensor]:
    """HF tensors from Megatron full tensors (inverse of `hf_to_megatron_full`; vocab padding stripped): views of
    `meg` but for q/k/v, which are copied into `split_into` (a flat tensor of exactly their size, dtype and
    device: the spare end of the trainer's parameter buffer), else into a new buffer."""
    groups, q_per_group, dim = arch.num_kv_heads, arch.num_heads // arch.num_kv_heads, arch.head_dim
    splits: dict[str, tuple[int, ...]] = {}  # HF name -> shape, of the q/k/v split out of Megatron's fused rows
    out = {
        "model.embed_tokens.weight": meg["embedding.word_embeddings.weight"][: arch.vocab_size],
        "model.norm.weight": meg["decoder.final_layernorm.weight"],
    }
    if not arch.tie_word_embeddings:
        out["lm_head.weight"] = meg["output_layer.weight"][: arch.vocab_size]
    for i in range(arch.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        for meg_name, name in _direct(arch).items():
            out[dst + name] = meg[src + meg_name]
        for kind in ("weight", "bias") if arch.qkv_bias else ("weight",):
            qkv = meg[f"{src}self_attention.linear_qkv.{kind}"]
            tail = qkv.shape[1:]
            q, k, v = qkv.reshape(groups, q_per_group + 2, dim, *tail).split([q_per_group, 1, 1], dim=1)
            for p, t in zip("qkv", (q, k, v), strict=True):
                out[f"{dst}self_attn.{p}_proj.{kind}"] = t  # [groups, heads, dim, *tail]: copied below
                splits[f"{dst}self_attn.{p}_proj.{kind}"] = (-1, *tail)
        for meg_mlp, hf_mlp in _mlps(arch, i):
            gate, up = meg[meg_mlp + "linear_fc1.weight"].chunk(2)
            out[hf_mlp + "gate_proj.weight"], out[hf_mlp + "up_proj.weight"] = gate.contiguous(), up.contiguous()
            out[hf_mlp + "down_proj.weight"] = meg[meg_mlp + "linear_fc2.weight"]
    # The split q/k/v are the only copies: all of them go into one buffer, back to back, so that a publisher
    # sends them as one flattened bucket without packing them again (weight_sync.py).
    for dtype in dict.fromkeys(out[name].dtype for name in splits):
        names = [name for name in splits if out[name].dtype == dtype]
        numel = sum(out[name].numel() for name in names)
        if split_into is None:
            buffer = out[names[0]].new_empty(numel)
        elif (split_into.numel(), split_into.dtype, split_into.device) == (numel, dtype, out[names[0]].device):
            buffer = split_into
        else:
            raise ValueError(
                f"split_into holds {split_into.numel()} {split_into.dtype} on {split_into.device}; "
                f"the q/k/v are {numel} {dtype} on {out[names[0]].device}"
            )
        offset = 0
        for name in names:
            target = buffer[offset : offset + out[name].numel()].view(out[name].shape)
            target.copy_(out[name])
            out[name] = target.view(splits[name])
            offset += target.numel()
    return out


def published_as_copy(name: str) -> bool:
    """Whether `megatron_full_to_hf` gives Megatron tensor `name` as new tensors rather than views of it: the
    fused q/k/v rows, which interleave the heads of each KV group."""
    return ".linear_qkv." in name


def publish_order(name: str) -> int:
    """Where Megatron tensor `name` goes in the trainer's parameter buffer (param_buffer.py), lowest first, so
    that the tensors `megatron_full_to_hf` gives as views lie back to back, followed by the copies: first the
    fused q/k/v rows (published as copies), then the vocabulary rows (published without their padding rows,
    which would break the run), then the rest."""
    if published_as_copy(name):
        return 0
    return 1 if name.endswith(("word_embeddings.weight", "output_layer.weight")) else 2


def tp_split_dim(name: str) -> int | None:
    """Dimension along which Megatron splits `name` across TP ranks, or None if replicated."""
    if name.endswith(_COLUMN):
        return 0
    if name.endswith(_ROW):
        return 1
    return None


def shard(name: str, full: Tensor, *, tp_rank: int, tp_size: int) -> Tensor:
    """This TP rank's piece of a Megatron full tensor."""
    dim = tp_split_dim(name)
    if dim is None:
        return full
    if name.endswith("linear_fc1.weight"):  # each rank holds [gate_r; up_r]
        gate, up = full.chunk(2)
        return torch.cat([gate.chunk(tp_size)[tp_rank], up.chunk(tp_size)[tp_rank]]).contiguous()
    return full.chunk(tp_size, dim=dim)[tp_rank].contiguous()


def unshard(name: str, shards: list[Tensor]) -> Tensor:
    """The Megatron full tensor from every TP rank's piece, in TP-rank order (inverse of `shard`)."""
    dim = tp_split_dim(name)
    if dim is None:
        return shards[0]
    if name.endswith("linear_fc1.weight"):
        pairs = [s.chunk(2) for s in shards]
        return torch.cat([g for g, _ in pairs] + [u for _, u in pairs])
    return torch.cat(shards, dim=dim)


def stage_layers(arch: ArchSpec, *, pp_rank: int, pp_size: int) -> range:
    """Global indices of the decoder layers on pipeline stage `pp_rank` (uniform split)."""
    per_stage = arch.num_layers // pp_size
    return range(pp_rank * per_stage, (pp_rank + 1) * per_stage)


def expert_offset(arch: ArchSpec, *, ep_rank: int, ep_size: int) -> int:
    """Global index of expert-parallel rank `ep_rank`'s first expert (experts split evenly, in order)."""
    return ep_rank * arch.moe.num_experts // ep_size if arch.moe is not None else 0


def to_global_name(local_name: str, layer_offset: int, expert_offset: int = 0) -> str:
    """Megatron full name of a stage-local (and expert-rank-local) parameter name."""
    match = _LAYER.match(local_name)
    if not match:
        return local_name
    name = f"decoder.layers.{int(match[1]) + layer_offset}.{match[2]}"
    expert = _EXPERT.match(name)
    return f"{expert[1]}{int(expert[2]) + expert_offset}{expert[3]}" if expert else name


def is_expert_param(name: str) -> bool:
    """True for the weights of a routed expert (split over expert-parallel ranks, not replicated)."""
    return ".local_experts." in name


def local_state_dict(
    full: Mapping[str, Tensor],
    arch: ArchSpec,
    *,
    local_names: list[str],
    tp_rank: int,
    tp_size: int,
    pp_rank: int,
    pp_size: int,
    ep_rank: int = 0,
    ep_size: int = 1,
) -> dict[str, Tensor]:
    """The tensors a rank loads into its `GPTModel` (keys `local_names`) from Megatron full tensors.

    A tied last stage of a pipeline holds its own copy of the embedding as `output_layer.weight`.
    """
    offset = stage_layers(arch, pp_rank=pp_rank, pp_size=pp_size).start
    experts = expert_offset(arch, ep_rank=ep_rank, ep_size=ep_size)
    out = {}
    for name in local_names:
        global_name = to_global_name(name, offset, experts)
        if global_name == "output_layer.weight" and arch.tie_word_embeddings:
            global_name = "embedding.word_embeddings.weight"
        out[name] = shard(name, full[global_name], tp_rank=tp_rank, tp_size=tp_size)
    return out
