"""Qwen3, Qwen3-MoE and Llama 3 end to end on CPU: Megatron logits equal HF's, HF export round trips exactly, the
native engine serves the model, and the trainer's log-probs equal the engine's.

Each family is a tiny random HF model (family_models.py, no hub access). The trainer runs each at two layouts:
pipeline size 2, and split over two ranks within the layers ("split": tensor parallel for the dense models, expert
parallel over two DP ranks for the MoE model, which trains at TP 1).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from slime_rl.config import EngineConfig, TrainerConfig
from slime_rl.engines.client import EngineClient
from slime_rl.engines.native.runner import ModelRunner
from slime_rl.engines.native.weights import read_safetensors_dir
from slime_rl.engines.protocol import GenerateRequest, SamplingParams
from slime_rl.engines.server import EngineProcess
from slime_rl.trainer.checkpoint import export_checkpoint_to_hf
from tests.integration.family_models import FAMILIES, make_family_model
from tests.integration.trainer_ranks import engine_batch, run_ranks

PROMPTS = [[1, 6, 7, 77, 8, 85], [1, 9], [1, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29], [1, 50, 51]]
NUM_TOKENS = 20
LOGITS_IDS = torch.tensor([[1, 5, 17, 33, 60, 61, 62, 90, 4, 4, 12, 98, 3, 44, 45, 46, 47, 48, 49, 70, 71, 72]])
MAX_LOGIT_DIFF = 1e-4


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory) -> tuple[str, str]:
    return request.param, str(make_family_model(tmp_path_factory.mktemp(request.param) / "hf", request.param))


@pytest.fixture(scope="module")
def greedy(family_model, tmp_path_factory) -> list[tuple[list[int], list[float]]]:
    """The native engine's greedy continuation of every prompt: (token ids, log-probs)."""
    _, path = family_model
    cfg = EngineConfig(max_running_requests=8, max_context_len=128, startup_timeout_s=120)
    engine = EngineProcess(cfg, path, log_path=str(tmp_path_factory.mktemp("logs") / "engine.log"))
    try:
        url = engine.start()

        async def go():
            async with EngineClient(url) as client:
                params = SamplingParams(max_new_tokens=NUM_TOKENS, ignore_eos=True, temperature=0.0)
                requests = [GenerateRequest(input_ids=p, sampling_params=params) for p in PROMPTS]
                return await asyncio.gather(*(client.generate(r) for r in requests))

        outs = asyncio.run(go())
    finally:
        engine.stop()
    return [(o.output_ids, o.output_logprobs) for o in outs]


def logits_logprobs_and_exports(trainer, ids, batch, export_dir):
    """Vocab-gathered logits of `ids` (pipeline size 1 only), log-probs of `batch`, then both HF exports."""
    from megatron.core import parallel_state as mpu

    from slime_rl.trainer.cpu_compat import device_scope

    logits = None
    if trainer.layout.pp_size == 1:
        with device_scope(), torch.no_grad():
            local = trainer.model(ids, torch.arange(ids.shape[1])[None], None)  # [b, s, vocab / tp]
        shards = [torch.empty_like(local) for _ in range(trainer.layout.tp_size)]
        dist.all_gather(shards, local.contiguous(), group=mpu.get_tensor_model_parallel_group())
        logits = torch.cat(shards, dim=-1)[..., : trainer.arch.vocab_size]
    logprobs = trainer.compute_logprobs(batch)
    trainer.export_hf(export_dir)
    trainer.save(step=1)
    return {"logits": logits, "logprobs": logprobs}


def _layout(family: str, name: str) -> dict[str, int]:
    if name == "pp2":
        return {"pipeline_model_parallel_size": 2}
    if family == "qwen3_moe":
        return {"data_parallel_size": 2, "expert_model_parallel_size": 2}
    return {"tensor_model_parallel_size": 2}


@pytest.fixture(scope="module", params=["split", "pp2"])
def trainer_run(request, family_model, greedy, tmp_path_factory):
    """One trainer run per layout: its logits, log-probs of the engine's continuations and both exports."""
    family, path = family_model
    tmp = tmp_path_factory.mktemp(f"{family}_{request.param}")
    cfg = TrainerConfig(micro_batch_size=2, checkpoint_dir=str(tmp / "ckpt"), **_layout(family, request.param))
    result = run_ranks(
        logits_logprobs_and_exports,
        model_path=path,
        trainer_cfg=cfg,
        ids=LOGITS_IDS,
        batch=engine_batch(PROMPTS, greedy),
        export_dir=str(tmp / "export"),
    )[0]
    return result | {"export_dir": tmp / "export", "checkpoint_dir": tmp / "ckpt"}


def hf_greedy(model, prompt: list[int]) -> list[int]:
    """`NUM_TOKENS` argmax tokens of HF's forward pass. (`generate` with `min_new_tokens` would forbid EOS, which the
    engine under `ignore_eos` may pick.)"""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(NUM_TOKENS):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def hf_logprobs(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logprobs = model(ids).logits[0].float().log_softmax(-1)
    positions = torch.arange(len(prompt) - 1, ids.shape[1] - 1)
    return logprobs[positions, ids[0, len(prompt) :]]


def assert_same_weights(exported_dir: Path, original_dir: str) -> None:
    exported = load_file(str(exported_dir / "model.safetensors"))
    original = load_file(str(sorted(Path(original_dir).glob("*.safetensors"))[0]))
    if "lm_head.weight" not in exported:  # tied: HF may or may not store the alias
        original.pop("lm_head.weight", None)
    assert exported.keys() == original.keys()
    for name, tensor in original.items():
        torch.testing.assert_close(exported[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("trainer_run", ["split"], indirect=True)  # logits need pipeline size 1
def test_model_families_megatron_logits_equal_hf_logits(family_model, trainer_run):
    model = AutoModelForCausalLM.from_pretrained(family_model[1])
    with torch.no_grad():
        expected = model(LOGITS_IDS).logits
    assert (trainer_run["logits"] - expected).abs().max().item() < MAX_LOGIT_DIFF


def test_model_families_hf_export_round_trips_exactly(family_model, trainer_run, tmp_path):
    assert_same_weights(trainer_run["export_dir"], family_model[1])
    # The offline path of `slime-rl export-hf`: the checkpoint's TP/PP shards merged in one process.
    assert_same_weights(export_checkpoint_to_hf(trainer_run["checkpoint_dir"], tmp_path / "hf"), family_model[1])


def test_model_families_native_engine_greedy_matches_hf(family_model, greedy):
    model = AutoModelForCausalLM.from_pretrained(family_model[1])
    for prompt, (ids, logprobs) in zip(PROMPTS, greedy, strict=True):
        assert ids == hf_greedy(model, prompt)
        expected = hf_logprobs(model, prompt, ids)
        torch.testing.assert_close(torch.tensor(logprobs), expected, atol=1e-4, rtol=0)


def test_model_families_native_engine_loads_checkpoint_tensors_by_name(family_model):
    # Weight updates arrive under the checkpoint's names; transformers holds an MoE layer's experts fused.
    runner = ModelRunner(family_model[1], device="cpu", dtype=torch.float32, num_slots=1, max_len=64)
    expected = runner.prefill(0, [PROMPTS[0]])
    with torch.no_grad():
        for param in runner.model.parameters():
            param.zero_()
    tensors = list(read_safetensors_dir(family_model[1]))
    assert runner.load_weights(tensors) == len(tensors)
    torch.testing.assert_close(runner.prefill(0, [PROMPTS[0]]), expected, rtol=0, atol=0)


def test_model_families_trainer_logprobs_equal_engine_logprobs(greedy, trainer_run):
    engine = np.concatenate([np.asarray(lp) for _, lp in greedy])
    np.testing.assert_allclose(np.concatenate(trainer_run["logprobs"]), engine, atol=1e-4, rtol=0)
