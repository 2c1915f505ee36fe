"""Trainer benchmark: RL training tokens/s at TP=1 and TP=2, and weight-publish efficiency.

Runs where the trainer runs: on CPU (gloo, one torch thread per rank) or, when CUDA is present, on the
GPUs (NCCL, one GPU per rank; TP sizes above the GPU count are skipped). Prints one JSON object:
- `train.tp{1,2}`: median `perf/train_tokens_per_s` of a GRPO step (recompute of old logprobs included)
  over `--repeats` steps after one warm-up step; one process per rank.
- `publish`: median time of `publish_weights` (gather + broadcast) to one native engine, the bytes
  moved, the memcpy bandwidth of this machine measured in the same run, and
  `publish_efficiency` = (bytes / bandwidth) / time: 1.0 would be a single memcpy of the weights.
  The engine shares the trainer's device kind; with a single GPU the transport is `disk`, since NCCL
  refuses two ranks on one device.
Medians of several repeats; hardware and git commit included; never asserts.

Usage: python benchmarks/trainer_step.py [--hidden-size 128 --num-layers 4 --repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from slime_rl.config import AlgorithmConfig, EngineConfig, ModelConfig, TrainerConfig
from slime_rl.engines.server import EngineProcess
from slime_rl.observability.environment import git_commit, hardware_info
from slime_rl.processes import free_port
from slime_rl.toy.model import make_toy_model
from slime_rl.types import Sample, TrainBatch


def make_batch(num_samples: int, prompt_len: int, response_len: int, vocab: int) -> TrainBatch:
    rng = np.random.default_rng(0)
    samples = [
        Sample(
            uid=f"s{i}",
            group_id=f"g{i // 4}",
            index=i % 4,
            prompt_ids=rng.integers(3, vocab, prompt_len),
            response_ids=rng.integers(3, vocab, response_len),
            rollout_logprobs=np.full(response_len, -3.0),
            loss_mask=np.ones(response_len),
        )
        for i in range(num_samples)
    ]
    return TrainBatch(step=0, samples=samples, advantages=rng.normal(size=num_samples))


def _rank(rank: int, world_size: int, port: int, out_dir: str, payload: bytes) -> None:
    torch.set_num_threads(1)
    from slime_rl.trainer.parallel import destroy_parallel
    from slime_rl.trainer.trainer import MegatronTrainer

    model_cfg, trainer_cfg, batch, repeats, engine_url = pickle.loads(payload)
    trainer = MegatronTrainer(model_cfg, trainer_cfg, AlgorithmConfig(), rank, world_size, "127.0.0.1", port)
    trainer.init()
    result: dict[str, list[float]] = {"tokens_per_s": [], "publish_s": [], "bytes": []}
    trainer.train(batch)  # warm-up
    for _ in range(repeats):
        result["tokens_per_s"].append(trainer.train(batch)["perf/train_tokens_per_s"])
    if engine_url:
        for version in range(1, repeats + 2):
            metrics = trainer.publish_weights([engine_url], version)
            if version > 1 and metrics:  # the first publish also builds the update group
                result["publish_s"].append(metrics["weights/publish_time_s"])
                result["bytes"].append(metrics["weights/bytes"])
    destroy_parallel()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def run(model_path: str, trainer_cfg: TrainerConfig, batch: TrainBatch, repeats: int, engine_url: str | None) -> dict:
    payload = pickle.dumps((ModelConfig(path=model_path), trainer_cfg, batch, repeats, engine_url))
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_rank, args=(trainer_cfg.world_size, free_port(), out_dir, payload), nprocs=trainer_cfg.world_size)
        return torch.load(Path(out_dir) / "rank0.pt")


def memcpy_bandwidth_bytes_per_s(num_bytes: int = 256 << 20, repeats: int = 5) -> float:
    torch.set_num_threads(1)
    src = torch.ones(num_bytes // 4)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return num_bytes / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--response-len", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        model_path = str(
            make_toy_model(
                Path(tmp) / "model",
                hidden_size=args.hidden_size,
                num_layers=args.num_layers,
                intermediate_size=args.hidden_size * 3,
            )
        )
        num_params = sum(t.numel() for t in load_file(f"{model_path}/model.safetensors").values())
        vocab = 40
        batch = make_batch(args.num_samples, args.prompt_len, args.response_len, vocab)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        train = {}
        for tp in [tp for tp in (1, 2) if not gpus or tp <= gpus]:
            cfg = TrainerConfig(tensor_model_parallel_size=tp, micro_batch_size=4, lr=1e-4)
            result = run(model_path, cfg, batch, args.repeats, None)
            tokens_per_s = statistics.median(result["tokens_per_s"])
            train[f"tp{tp}"] = {"processes": tp, "train_tokens_per_s": tokens_per_s}
        transport = "disk" if gpus == 1 else "distributed"
        engine_device = f"cuda:{gpus - 1}" if gpus else "cpu"
        engine = EngineProcess(
            EngineConfig(device=engine_device, max_running_requests=4, max_context_len=128), model_path
        )
        try:
            trainer_cfg = TrainerConfig(weight_sync=transport, checkpoint_dir=f"{tmp}/checkpoints")
            result = run(model_path, trainer_cfg, batch, args.repeats, engine.start())
        finally:
            engine.stop()
    bandwidth = memcpy_bandwidth_bytes_per_s()
    publish_s = statistics.median(result["publish_s"])
    num_bytes = result["bytes"][0]
    report = {
        "benchmark": "trainer_step",
        "model": {"hidden_size": args.hidden_size, "num_layers": args.num_layers, "num_params": num_params},
        "batch": {"num_samples": args.num_samples, "tokens_per_sample": args.prompt_len + args.response_len},
        "train": train,
        "tp2_over_tp1": train["tp2"]["train_tokens_per_s"] / train["tp1"]["train_tokens_per_s"]
        if "tp2" in train
        else None,
        "device": f"{gpus} x {torch.cuda.get_device_name(0)}" if gpus else "cpu",
        "publish": {
            "engines": 1,
            "transport": transport if transport == "disk" else f"{'nccl' if gpus else 'gloo'} broadcast",
            "engine_device": engine_device,
            "publish_time_s": publish_s,
            "bytes": num_bytes,
            "memcpy_bytes_per_s": bandwidth,
            "publish_efficiency": (num_bytes / bandwidth) / publish_s,
        },
        "repeats": args.repeats,
        "hardware": hardware_info(),
        "git_commit": git_commit(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
