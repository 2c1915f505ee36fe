"""Megatron-core `GPTModel` built from a HuggingFace config (Llama incl. Llama 3, Qwen2, Qwen3 and Qwen3-MoE).

Owns the architecture mapping (RMSNorm, SwiGLU, RoPE incl. Llama 3 frequency scaling, GQA, Qwen2's QKV bias,
Qwen3's per-head q/k RMSNorm, tied embeddings, Qwen3-MoE's top-k routed experts) and the layer spec
(Megatron's local spec with our SDPA core attention, on GPU and CPU alike). Weights are not loaded here:
`hf_convert` does that. Megatron is imported inside functions only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from slime_rl.errors import ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "qwen3_moe")


@dataclass(frozen=True, slots=True)
class Llama3Rope:
    """HF `rope_parameters` of `rope_type: llama3` (Llama 3.1+): long-wavelength frequencies divided by `factor`."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def scale(self, inv_freq: torch.Tensor) -> torch.Tensor:
        """The scaled inverse frequencies, as transformers' `_compute_llama3_parameters` computes them."""
        low_freq_wavelen = self.original_max_position_embeddings / self.low_freq_factor
        high_freq_wavelen = self.original_max_position_embeddings / self.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / self.factor, inv_freq)
        smooth = (self.original_max_position_embeddings / wavelen - self.low_freq_factor) / (
            self.high_freq_factor - self.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium, smoothed, scaled)


@dataclass(frozen=True, slots=True)
class MoESpec:
    """Qwen3-MoE's MLP: a softmax router picks `topk` of `num_experts` SwiGLU experts per token."""

    num_experts: int
    topk: int
    ffn_hidden_size: int  # each expert's intermediate size (HF `moe_intermediate_size`)
    norm_topk_prob: bool  # renormalise the chosen experts' probabilities to sum to 1
    aux_loss_coef: float  # load-balancing loss weight (HF `router_aux_loss_coef`)


@dataclass(frozen=True, slots=True)
class ArchSpec:
    """The architecture facts the trainer needs, read once from an HF `config.json`."""

    model_type: str
    vocab_size: int  # HF vocabulary (rows of embed_tokens)
    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    qkv_bias: bool  # Qwen2: q/k/v projections carry a bias
    qk_layernorm: bool  # Qwen3: RMSNorm over each query and key head (`q_norm`/`k_norm`) before RoPE
    llama3_rope: Llama3Rope | None  # Llama 3 frequency scaling; None = plain RoPE
    tie_word_embeddings: bool
    moe: MoESpec | None = None  # routed experts in every layer's MLP; None = dense

    def padded_vocab_size(self, tp_size: int) -> int:
        """Vocabulary rounded up to a multiple of `tp_size` (vocab-parallel layers split it evenly)."""
        return -(-self.vocab_size // tp_size) * tp_size


def arch_from_hf(hf_config: Any) -> ArchSpec:
    """Read an `ArchSpec` from a transformers config; raises ConfigError for unsupported features."""
    model_type = hf_config.model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"model type {model_type!r} is not supported; use one of {SUPPORTED_MODEL_TYPES}")
    rope = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type not in ("default", "llama3"):
        raise ConfigError(f"rope_type={rope_type!r} is not supported; use default or llama3 RoPE")
    if getattr(hf_config, "hidden_act", "silu") != "silu":
        raise ConfigError(f"hidden_act={hf_config.hidden_act!r} is not supported; Llama/Qwen use silu")
    if getattr(hf_config, "use_sliding_window", False):
        raise ConfigError("use_sliding_window=true is not supported; the trainer attends over the whole sequence")
    num_heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
    return ArchSpec(
        model_type=model_type,
        vocab_size=hf_config.vocab_size,
        hidden_size=hf_config.hidden_size,
        ffn_hidden_size=hf_config.intermediate_size,
        num_layers=hf_config.num_hidden_layers,
        num_heads=num_heads,
        num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or num_heads,
        head_dim=head_dim,
        rms_norm_eps=hf_config.rms_norm_eps,
        rope_theta=float(rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))),
        max_position_embeddings=hf_config.max_position_embeddings,
        qkv_bias=model_type == "qwen2" or bool(getattr(hf_config, "attention_bias", False)),
        qk_layernorm=model_type in ("qwen3", "qwen3_moe"),
        llama3_rope=_llama3_rope(rope) if rope_type == "llama3" else None,
        tie_word_embeddings=bool(hf_config.tie_word_embeddings),
        moe=_moe_spec(hf_config) if model_type == "qwen3_moe" else None,
    )


def _moe_spec(hf_config: Any) -> MoESpec:
    if hf_config.decoder_sparse_step != 1 or hf_config.mlp_only_layers:
        raise ConfigError(
            f"decoder_sparse_step={hf_config.decoder_sparse_step}, mlp_only_layers={hf_config.mlp_only_layers}: "
            "the trainer needs experts in every layer (decoder_sparse_step=1, mlp_only_layers=[])"
        )
    return MoESpec(
        num_experts=hf_config.num_experts,
        topk=hf_config.num_experts_per_tok,
        ffn_hidden_size=hf_config.moe_intermediate_size,
        norm_topk_prob=bool(hf_config.norm_topk_prob),
        aux_loss_coef=float(hf_config.router_aux_loss_coef),
    )


def _llama3_rope(rope: dict) -> Llama3Rope:
    return Llama3Rope(
        factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
    )


def transformer_config(arch: ArchSpec, *, tp_size: int, pp_size: int, ep_size: int = 1, dtype: torch.dtype) -> Any:
    """Megatron `TransformerConfig` for `arch` (no dropout: RL log-probs must be deterministic)."""
    from megatron.core.transformer import TransformerConfig

    if arch.moe is None and ep_size > 1:
        raise ConfigError(f"trainer.expert_model_parallel_size={ep_size} needs an MoE model; set it to 1")
    if arch.moe is not None and tp_size > 1:
        # Megatron's MoE layer refuses to train under TP without sequence parallelism, which this trainer lacks.
        raise ConfigError(
            f"trainer.tensor_model_parallel_size={tp_size}: MoE models train at TP 1 here; split the experts with "
            "trainer.expert_model_parallel_size (and the layers with pipeline_model_parallel_size) instead"
        )
    if arch.moe is not None and arch.moe.num_experts % ep_size:
        raise ConfigError(
            f"num_experts={arch.moe.num_experts} is not divisible by trainer.expert_model_parallel_size={ep_size}"
        )
    if arch.num_layers % pp_size:
        raise ConfigError(f"num_hidden_layers={arch.num_layers} is not divisible by pipeline size {pp_size}")
    if arch.num_kv_heads % tp_size:
        raise ConfigError(f"num_key_value_heads={arch.num_kv_heads} is not divisible by tensor size {tp_size}")
    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_heads,
        num_query_groups=arch.num_kv_heads,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=torch.nn.functional.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        qk_layernorm=arch.qk_layernorm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        masked_softmax_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        tensor_model_parallel_size=tp_size,
        pipeline_model_parallel_size=pp_size,
        pipeline_dtype=dtype,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=not torch.cuda.is_available(),
        # Weights come from the HF checkpoint, but with perform_initialization=False Megatron 0.16 never marks
        # CPU-initialised weights as tensor-parallel, and grad norms then skip their shards on TP ranks > 0.
        perform_initialization=True,
        **(_moe_config(arch.moe, ep_size) if arch.moe is not None else {}),
    )


def _moe_config(moe: MoESpec, ep_size: int) -> dict[str, Any]:
    """Megatron's MoE settings for HF's router: softmax then top-k, renormalised when `norm_topk_prob` (Megatron's
    top-k-then-softmax is the same thing), else the full softmax's top-k probabilities (`moe_router_pre_softmax`)."""
    from slime_rl.trainer.cpu_compat import moe_token_dispatcher

    return {
        "num_moe_experts": moe.num_experts,
        "moe_router_topk": moe.topk,
        "moe_ffn_hidden_size": moe.ffn_hidden_size,
        "moe_router_pre_softmax": not moe.norm_topk_prob,
        "moe_router_load_balancing_type": "aux_loss",
        "moe_aux_loss_coeff": moe.aux_loss_coef,
        "moe_token_dispatcher_type": moe_token_dispatcher(),
        "moe_grouped_gemm": False,  # one MLP per expert (SequentialMLP): runs on CPU and GPU alike
        "expert_model_parallel_size": ep_size,
    }


def layer_spec(arch: ArchSpec) -> Any:
    """Megatron's local GPT layer spec with `SDPACoreAttention` as the core attention."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from slime_rl.trainer.cpu_compat import core_attention_class

    spec = get_gpt_layer_local_spec(
        num_experts=arch.moe.num_experts if arch.moe is not None else None,
        normalization="RMSNorm",
        qk_layernorm=arch.qk_layernorm,
    )
    spec.submodules.self_attention.submodules.core_attention = core_attention_class()
    return spec


def build_gpt_model(arch: ArchSpec, config: Any, *, pre_process: bool, post_process: bool) -> Any:
    """One pipeline stage of the GPT model, on the current device, with uninitialised weights."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.moe import moe_utils

    if not moe_utils.HAVE_TE:
        # Megatron 0.16's router gating tests `te_general_gemm is not None` but binds the name only when
        # Transformer Engine imports; without TE (CPU, or a GPU without it) it then falls back to torch.
        moe_utils.te_general_gemm = None
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(arch),
        vocab_size=arch.padded_vocab_size(config.tensor_model_parallel_size),
        max_sequence_length=arch.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,  # logits stay vocab-split across TP ranks; logprobs.py reduces them
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=int(arch.rope_theta),
    )
    if arch.llama3_rope is not None:
        # Megatron's own `rope_scaling` takes only the factor (low/high_freq_factor and the original context are
        # fixed at Llama 3.1's 1/4/8192), so the HF parameters are applied to its unscaled frequencies here.
        rope = model.rotary_pos_emb
        rope.inv_freq = arch.llama3_rope.scale(rope.inv_freq)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model
