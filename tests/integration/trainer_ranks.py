"""Runs `MegatronTrainer` scenarios on N local processes (torch.multiprocessing spawn, gloo on 127.0.0.1).

`run_ranks(scenario, world_size, **kwargs)` starts one process per rank; each builds a trainer and runs
`scenario(trainer, **kwargs)`; the return value of every rank comes back as a list indexed by rank. The
processes exit (and are joined) before `run_ranks` returns.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.multiprocessing as mp

from slime_rl.config import AlgorithmConfig, ModelConfig, TrainerConfig
from slime_rl.processes import free_port
from slime_rl.types import Sample, TrainBatch

# Fixed old log-probs (the rollout's), so the PPO ratio moves after the first step and the loss reflects the update.
FIXED_OLD = AlgorithmConfig(recompute_old_logprobs=False, kl_coef=0.01, entropy_coef=0.01)


def trainer_cfg(tp: int = 1, pp: int = 1, dp: int = 1, **overrides: Any) -> TrainerConfig:
    """The trainer settings of the parallel tests: 2 rows per micro-batch and lr 1e-2 (steps that show) unless
    `overrides` say otherwise."""
    settings = {"micro_batch_size": 2, "lr": 1e-2} | overrides
    return TrainerConfig(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, data_parallel_size=dp, **settings
    )


def make_batch(*, num_samples: int = 6, vocab: int = 40, seed: int = 0, max_response: int = 7) -> TrainBatch:
    """A fixed random batch: prompts of 2-5 tokens, responses of 1 to `max_response` tokens (log-uniform above
    7, a long tail), rollout logprobs of -1."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(num_samples):
        num_prompt = int(rng.integers(2, 6))
        if max_response <= 7:
            num_response = int(rng.integers(1, max_response + 1))
        else:
            num_response = int(np.exp(rng.uniform(0, np.log(max_response))))
        samples.append(
            Sample(
                uid=f"s{i}",
                group_id=f"g{i // 2}",
                index=i % 2,
                prompt_ids=rng.integers(3, vocab, num_prompt),
                response_ids=rng.integers(3, vocab, num_response),
                rollout_logprobs=np.full(num_response, -1.0),
                loss_mask=(rng.random(num_response) > 0.2).astype(np.uint8),
            )
        )
    return TrainBatch(step=0, samples=samples, advantages=rng.normal(size=num_samples))


def dp_halves(batch: TrainBatch) -> list[TrainBatch]:
    """`batch` split in two for two DP ranks: together they train what one rank trains on the whole batch."""
    half = len(batch.samples) // 2
    return [
        TrainBatch(step=0, samples=batch.samples[:half], advantages=batch.advantages[:half]),
        TrainBatch(step=0, samples=batch.samples[half:], advantages=batch.advantages[half:]),
    ]


def engine_batch(prompts: list[list[int]], outputs: list[tuple[list[int], list[float]]]) -> TrainBatch:
    """A batch of the engine's answers: prompt i with its (output ids, output logprobs), every token trained."""
    samples = [
        Sample(
            uid=f"s{i}",
            group_id="g",
            index=i,
            prompt_ids=prompt,
            response_ids=ids,
            rollout_logprobs=logprobs,
            loss_mask=np.ones(len(ids)),
        )
        for i, (prompt, (ids, logprobs)) in enumerate(zip(prompts, outputs, strict=True))
    ]
    return TrainBatch(step=0, samples=samples, advantages=np.zeros(len(samples)))


def _worker(rank: int, world_size: int, port: int, out_dir: str, payload: bytes) -> None:
    torch.set_num_threads(1)
    scenario, model_cfg, trainer_cfg, algo_cfg, kwargs = pickle.loads(payload)
    from slime_rl.trainer.parallel import destroy_parallel
    from slime_rl.trainer.trainer import MegatronTrainer

    trainer = MegatronTrainer(model_cfg, trainer_cfg, algo_cfg, rank, world_size, "127.0.0.1", port)
    trainer.init()
    try:
        result = scenario(trainer, **kwargs)
    finally:
        destroy_parallel()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def run_ranks(
    scenario: Callable[..., Any],
    *,
    model_path: str,
    trainer_cfg: TrainerConfig,
    algo_cfg: AlgorithmConfig | None = None,
    device: str = "cpu",
    **kwargs: Any,
) -> list[Any]:
    """Run `scenario(trainer, **kwargs)` on `trainer_cfg.world_size` fresh processes; results by rank.

    `device="cpu"` hides any GPU from the ranks, so the CPU path (gloo) is what runs on a GPU machine too;
    `device="cuda"` lets the trainer take the GPUs (NCCL, one per rank).
    """
    world_size = trainer_cfg.world_size
    payload = pickle.dumps((scenario, ModelConfig(path=model_path), trainer_cfg, algo_cfg or AlgorithmConfig(), kwargs))
    hide_gpus = {"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}  # read by the ranks as they start
    with tempfile.TemporaryDirectory() as out_dir, mock.patch.dict(os.environ, hide_gpus):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        mp.spawn(_worker, args=(world_size, free_port("127.0.0.1"), out_dir, payload), nprocs=world_size)
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
