"""MegatronTrainer against the native engine: log-prob parity, and weight publishing over gloo and disk;
rank 0's weight-update group rebuilt after an engine restart."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from slime_rl.config import AlgorithmConfig, EngineConfig, TrainerConfig
from slime_rl.engines.client import EngineClient
from slime_rl.engines.native.weights import read_safetensors_dir
from slime_rl.engines.protocol import GenerateRequest, SamplingParams
from slime_rl.engines.server import EngineProcess
from slime_rl.errors import ServiceError
from slime_rl.toy.model import make_toy_model
from slime_rl.trainer.weight_sync import WeightPublisher
from tests.integration.trainer_ranks import engine_batch, run_ranks

PROMPTS = [[1, 6, 7, 77, 8, 85], [1, 9], [1, 20, 21, 22, 23, 24, 25], [1, 50, 51]]
TEMPERATURE = 0.8


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
    return str(make_toy_model(tmp_path_factory.mktemp("toy") / "llama"))


@pytest.fixture
def engine_url(toy_model, tmp_path):
    cfg = EngineConfig(max_running_requests=8, max_context_len=128, startup_timeout_s=120)
    engine = EngineProcess(cfg, toy_model, log_path=str(tmp_path / "engine.log"))
    try:
        yield engine.start()
    finally:
        engine.stop()


def generate(url: str, *, temperature: float, seed: int | None = None) -> list[tuple[list[int], list[float], str]]:
    async def go():
        async with EngineClient(url) as client:
            params = SamplingParams(max_new_tokens=12, ignore_eos=True, temperature=temperature, sampling_seed=seed)
            outs = await asyncio.gather(
                *(client.generate(GenerateRequest(input_ids=p, sampling_params=params)) for p in PROMPTS)
            )
            return [(o.output_ids, o.output_logprobs, o.weight_version) for o in outs]

    return asyncio.run(go())


def logprobs_of(trainer, batch):
    return trainer.compute_logprobs(batch)


def test_trainer_logprobs_match_native_engine_at_tp2(toy_model, engine_url):
    outputs = generate(engine_url, temperature=TEMPERATURE, seed=7)
    batch = engine_batch(PROMPTS, [(ids, logprobs) for ids, logprobs, _ in outputs])
    cfg = TrainerConfig(tensor_model_parallel_size=2, micro_batch_size=2, logprob_temperature=TEMPERATURE)
    trainer_logprobs = run_ranks(logprobs_of, model_path=toy_model, trainer_cfg=cfg, batch=batch)[0]
    diff = np.abs(np.concatenate(trainer_logprobs) - np.concatenate([s.rollout_logprobs for s in batch.samples]))
    assert diff.mean() < 1e-4


def train_and_publish(trainer, batch, engine_url, export_dir):
    for _ in range(5):
        trainer.train_sft(batch)
    metrics = trainer.publish_weights([engine_url], version=1)
    after_broadcast = generate(engine_url, temperature=0.0) if trainer.rank == 0 else None
    trainer.export_hf(export_dir)
    trainer.cfg.weight_sync = "disk"
    disk_metrics = trainer.publish_weights([engine_url], version=2)
    return metrics, after_broadcast, disk_metrics


@pytest.mark.parametrize("tp_size", [1, 2])
def test_trainer_published_weights_change_engine_greedy_output_and_version(toy_model, engine_url, tmp_path, tp_size):
    before = generate(engine_url, temperature=0.0)
    # SFT towards a fixed target response so greedy decoding must change.
    target = [40, 41, 42, 43, 44, 45, 46, 47]
    batch = engine_batch(PROMPTS, [(target, [0.0] * len(target))] * len(PROMPTS))
    # TP=2: many small buckets of gathered (packed) tensors; TP=1: the model in one bucket from the trainer's
    # parameter buffer, q/k/v split into its spare end, nothing packed.
    bucket_mb = 1 if tp_size == 2 else TrainerConfig().weight_sync_bucket_mb
    cfg = TrainerConfig(
        tensor_model_parallel_size=tp_size,
        micro_batch_size=2,
        lr=5e-2,
        weight_sync_bucket_mb=bucket_mb,
        checkpoint_dir=str(tmp_path),
    )
    export_dir = str(tmp_path / "exported")
    results = run_ranks(
        train_and_publish,
        model_path=toy_model,
        trainer_cfg=cfg,
        algo_cfg=AlgorithmConfig(),
        batch=batch,
        engine_url=engine_url,
        export_dir=export_dir,
    )
    metrics, after_broadcast, disk_metrics = results[0]
    assert metrics["weights/bytes"] > 0
    if tp_size == 1:
        assert (metrics["weights/num_buckets"], metrics["weights/packed_bytes"]) == (1, 0)
    else:
        assert metrics["weights/num_buckets"] > 1 and metrics["weights/packed_bytes"] > 0
    assert all(version == "1" for _, _, version in after_broadcast)
    assert [ids for ids, _, _ in after_broadcast] != [ids for ids, _, _ in before]
    assert disk_metrics["weights/version"] == 2
    after = generate(engine_url, temperature=0.0)
    assert [ids for ids, _, _ in after] == [ids for ids, _, _ in after_broadcast]
    assert all(version == "2" for _, _, version in after)
    assert [ids for ids, _, _ in after] != [ids for ids, _, _ in before]
    # The engine now serves exactly the trainer's weights: its logprobs equal the exported model's.
    model = AutoModelForCausalLM.from_pretrained(export_dir)
    for prompt, (ids, logprobs, _) in zip(PROMPTS, after, strict=True):
        tokens = torch.tensor([prompt + ids])
        with torch.no_grad():
            expected = model(tokens).logits[0].log_softmax(-1)[torch.arange(len(prompt) - 1, tokens.shape[1] - 1)]
        expected = expected.gather(-1, torch.tensor(ids).unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(torch.tensor(logprobs), expected, atol=1e-4, rtol=0)


def engine_version(url: str) -> str:
    async def go():
        async with EngineClient(url) as client:
            return await client.get_weight_version()

    return asyncio.run(go())


def test_weight_publisher_after_engine_restart_raises_with_the_engine_error_then_rebuilds(toy_model, tmp_path):
    cfg = EngineConfig(max_running_requests=8, max_context_len=128, startup_timeout_s=120)
    engine = EngineProcess(cfg, toy_model, log_path=str(tmp_path / "engine.log"))
    tensors = dict(read_safetensors_dir(toy_model))
    publisher = WeightPublisher("127.0.0.1", bucket_bytes=1 << 20)
    try:
        url = engine.start()
        publisher.broadcast([url], tensors, version=1)
        assert engine.restart() == url  # a fresh process on the same port: it has no weight-update group
        with pytest.raises(ServiceError, match=f"{url}.*no weight update group"):
            publisher.broadcast([url], tensors, version=2)
        publisher.broadcast([url], tensors, version=3)  # a new group
        assert engine_version(url) == "3"
    finally:
        publisher.close()
        engine.stop()
