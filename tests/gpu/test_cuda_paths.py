"""The CUDA path of the same code the CPU tests run: the native engine and the Megatron trainer on a GPU.

Skipped without CUDA (tests/conftest.py). On a GPU machine: `pytest -m gpu tests/gpu`. The engine runs in
float32 where a test compares numbers with a reference, and in its default dtype (bf16 on CUDA) otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from slime_rl.config import AlgorithmConfig, EngineConfig, TrainerConfig
from slime_rl.engines.server import EngineProcess
from slime_rl.toy.model import make_toy_model
from tests.integration.test_trainer_engine import PROMPTS, generate
from tests.integration.trainer_ranks import engine_batch, make_batch, run_ranks

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    return str(make_toy_model(tmp_path_factory.mktemp("toy") / "llama"))


def cuda_engine(model: str, log_dir, dtype: str) -> EngineProcess:
    cfg = EngineConfig(device="cuda", dtype=dtype, max_running_requests=8, max_context_len=128, startup_timeout_s=300)
    return EngineProcess(cfg, model, log_path=str(log_dir / f"engine-{dtype}.log"))


@pytest.fixture(scope="module")
def fp32_engine_url(toy_model, tmp_path_factory):
    engine = cuda_engine(toy_model, tmp_path_factory.mktemp("logs"), "float32")
    try:
        yield engine.start()
    finally:
        engine.stop()


def test_cuda_engine_greedy_and_logprobs_match_hf_on_cuda(toy_model, fp32_engine_url):
    outputs = generate(fp32_engine_url, temperature=0.0)
    model = AutoModelForCausalLM.from_pretrained(toy_model).cuda().eval()
    for prompt, (ids, logprobs, version) in zip(PROMPTS, outputs, strict=True):
        tokens = torch.tensor([prompt], device="cuda")
        expected_ids = model.generate(tokens, max_new_tokens=len(ids), min_new_tokens=len(ids), do_sample=False)
        assert ids == expected_ids[0, len(prompt) :].tolist() and version == "0"
        full = torch.tensor([prompt + ids], device="cuda")
        with torch.no_grad():
            lp = model(full).logits[0].float().log_softmax(-1)[torch.arange(len(prompt) - 1, full.shape[1] - 1)]
        expected = lp.gather(-1, torch.tensor(ids, device="cuda").unsqueeze(-1)).squeeze(-1).cpu()
        torch.testing.assert_close(torch.tensor(logprobs), expected, atol=1e-3, rtol=0)


def test_cuda_engine_in_bf16_samples_reproducibly(toy_model, tmp_path):
    engine = cuda_engine(toy_model, tmp_path, "auto")
    try:
        url = engine.start()
        first, second = generate(url, temperature=1.0, seed=3), generate(url, temperature=1.0, seed=3)
    finally:
        engine.stop()
    assert first == second
    assert all(len(ids) == 12 and all(np.isfinite(logprobs)) for ids, logprobs, _ in first)


def grpo_step_and_logprobs(trainer, batch):
    before = trainer.train(batch)["train/loss"]
    after = trainer.train(batch)["train/loss"]
    return {"device": str(trainer.device), "before": before, "after": after}


def test_cuda_trainer_grpo_step_lowers_loss(toy_model):
    algo = AlgorithmConfig(recompute_old_logprobs=False, eps_clip=10.0, eps_clip_high=10.0)
    cfg = TrainerConfig(micro_batch_size=2, lr=1e-2)
    (result,) = run_ranks(
        grpo_step_and_logprobs, model_path=toy_model, trainer_cfg=cfg, algo_cfg=algo, batch=make_batch(), device="cuda"
    )
    assert result["device"].startswith("cuda")
    assert result["after"] < result["before"] - 1e-3


def logprobs_then_publish(trainer, batch, engine_url):
    logprobs = trainer.compute_logprobs(batch)
    for _ in range(5):
        trainer.train_sft(batch)
    trainer.cfg.weight_sync = "disk"  # one GPU: NCCL cannot put the trainer and the engine on the same device
    return logprobs, trainer.publish_weights([engine_url], version=1)


def test_cuda_trainer_logprobs_match_cuda_engine_and_published_weights_reach_it(toy_model, fp32_engine_url, tmp_path):
    sampled = engine_batch(PROMPTS, [(ids, lps) for ids, lps, _ in generate(fp32_engine_url, temperature=1.0, seed=11)])
    before = generate(fp32_engine_url, temperature=0.0)
    cfg = TrainerConfig(micro_batch_size=2, lr=5e-2, checkpoint_dir=str(tmp_path))
    (result,) = run_ranks(
        logprobs_then_publish,
        model_path=toy_model,
        trainer_cfg=cfg,
        batch=sampled,
        engine_url=fp32_engine_url,
        device="cuda",
    )
    logprobs, metrics = result
    diff = np.abs(np.concatenate(logprobs) - np.concatenate([s.rollout_logprobs for s in sampled.samples]))
    assert diff.mean() < 1e-3
    assert metrics["weights/version"] == 1
    after = generate(fp32_engine_url, temperature=0.0)
    assert all(version == "1" for _, _, version in after)
    assert [ids for ids, _, _ in after] != [ids for ids, _, _ in before]


def test_cuda_runner_turns_off_per_shape_cudnn_attention(toy_model):
    from slime_rl.engines.native.runner import ModelRunner

    torch.backends.cuda.enable_cudnn_sdp(True)
    runner = ModelRunner(toy_model, device="cuda", dtype=torch.bfloat16, num_slots=4, max_len=64)
    assert not torch.backends.cuda.cudnn_sdp_enabled()  # cuda_compat: a new plan per shape costs 80+ ms
    logits = [runner.decode([5] * 4, [n] * 4) for n in (3, 4, 5)]  # a new KV length every step
    assert all(out.shape == (4, runner.vocab_size) and torch.isfinite(out).all() for out in logits)
