"""Trainer benchmark: RL training tokens/s at TP=1 and TP=2, and weight-publish efficiency.

Runs where the trainer runs: on CPU (gloo, one torch thread per rank) or, when CUDA is present, on the
GPUs (NCCL, one GPU per rank; TP sizes above the GPU count are skipped). Prints one JSON object:
- `train.tp{1,2}`: median `perf/train_tokens_per_s` of a GRPO step (recompute of old logprobs included)
  over `--repeats` steps after one warm-up step; one process per rank.
- `packed_over_padded`: tokens/s of a long-tail batch (lognormal response lengths, `long_tail`) trained with
  `trainer.max_tokens_per_micro_batch` over the same batch in fixed-shape micro-batches, at the same
  micro-batch token capacity (rows x longest input); TP=1. This CPU build has no THD packing, so the
  budgeted path pads each micro-batch to its own longest sample.
- `publish`: median time of `--publish-repeats` calls of `publish_weights` (gather, broadcast, the engine's load
  and version check) of a model of `--publish-hidden-size` x `--publish-num-layers` (about 100 MB of fp32
  weights by default) to one native engine in `--publish-format` (`trainer.weight_sync_format`; `update_calls`,
  `broadcasts` and `packed_bytes` show how it went: one broadcast per flattened bucket, one per tensor
  otherwise, and the bytes rank 0 copied to pack buckets, 0 when the whole model went from the trainer's
  parameter buffer), the bytes moved, the memcpy bandwidth of this machine measured in the same run, and
  `publish_efficiency` = (bytes / bandwidth) / time: 1.0 would be a single memcpy of the weights.
  `publish_gb_per_s` is bytes / time; `publish_over_flat_broadcast` is the time of a plain broadcast of
  one flat buffer of the same bytes between two fresh processes (same backend) over the publish time,
  1.0 meaning the publish path costs nothing beyond the transfer. The engine shares the trainer's device
  kind; with a single GPU the transport is `disk`, since NCCL refuses two ranks on one device (no
  broadcast baseline then).
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
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from slime_rl.config import AlgorithmConfig, EngineConfig, ModelConfig, TrainerConfig
from slime_rl.engines.server import EngineProcess
from slime_rl.observability.environment import git_commit, hardware_info
from slime_rl.processes import free_port
from slime_rl.toy.model import make_toy_model
from slime_rl.types import Sample, TrainBatch


def make_batch(prompt_len: int, response_lens: list[int], vocab: int) -> TrainBatch:
    """Random tokens: one sample per entry of `response_lens`, each with a `prompt_len`-token prompt."""
    rng = np.random.default_rng(0)
    samples = [
        Sample(
            uid=f"s{i}",
            group_id=f"g{i // 4}",
            index=i % 4,
            prompt_ids=rng.integers(3, vocab, prompt_len),
            response_ids=rng.integers(3, vocab, n),
            rollout_logprobs=np.full(n, -3.0),
            loss_mask=np.ones(n),
        )
        for i, n in enumerate(response_lens)
    ]
    return TrainBatch(step=0, samples=samples, advantages=rng.normal(size=len(samples)))


def long_tail_lengths(num_samples: int, median: int, sigma: float, cap: int) -> list[int]:
    """Lognormal response lengths (median `median`, log-std `sigma`, at most `cap`): what APRIL batches look like."""
    rng = np.random.default_rng(1)
    return [int(min(cap, max(1, round(x)))) for x in rng.lognormal(np.log(median), sigma, num_samples)]


def _rank(rank: int, world_size: int, port: int, out_dir: str, payload: bytes) -> None:
    torch.set_num_threads(1)
    from slime_rl.trainer.parallel import destroy_parallel
    from slime_rl.trainer.trainer import MegatronTrainer

    model_cfg, trainer_cfg, batch, repeats, engine_url = pickle.loads(payload)
    trainer = MegatronTrainer(model_cfg, trainer_cfg, AlgorithmConfig(), rank, world_size, "127.0.0.1", port)
    trainer.init()
    result: dict[str, list] = {"tokens_per_s": [], "publish_s": [], "gather_s": [], "bytes": [], "calls": []}
    trainer.train(batch)  # warm-up
    for _ in range(0 if engine_url else repeats):  # a publishing run times `repeats` publishes instead
        result["tokens_per_s"].append(trainer.train(batch)["perf/train_tokens_per_s"])
    if engine_url:
        for version in range(1, repeats + 2):
            metrics = trainer.publish_weights([engine_url], version)
            if version > 1 and metrics:  # the first publish also builds the update group
                result["publish_s"].append(metrics["weights/publish_time_s"])
                result["gather_s"].append(metrics["weights/gather_time_s"])
                result["bytes"].append(metrics["weights/bytes"])
                result["calls"].append(
                    (metrics["weights/num_buckets"], metrics["weights/num_broadcasts"], metrics["weights/packed_bytes"])
                )
    destroy_parallel()
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")


def run(model_path: str, trainer_cfg: TrainerConfig, batch: TrainBatch, repeats: int, engine_url: str | None) -> dict:
    payload = pickle.dumps((ModelConfig(path=model_path), trainer_cfg, batch, repeats, engine_url))
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_rank, args=(trainer_cfg.world_size, free_port(), out_dir, payload), nprocs=trainer_cfg.world_size)
        return torch.load(Path(out_dir) / "rank0.pt")


def _flat_broadcast_rank(rank: int, port: int, backend: str, num_bytes: int, repeats: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    buf = torch.zeros(num_bytes // 4, device=device)
    times = []
    for _ in range(repeats + 1):  # the first broadcast sets up the connection
        dist.barrier()
        start = time.perf_counter()
        dist.broadcast(buf, src=0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    dist.destroy_process_group()
    if rank == 1:  # the receiver: its time ends when the last byte has arrived
        torch.save(times[1:], Path(out_dir) / "times.pt")


def flat_broadcast_seconds(num_bytes: int, backend: str, repeats: int) -> float:
    """Median time of a plain `dist.broadcast` of one flat `num_bytes` buffer between two fresh processes."""
    with tempfile.TemporaryDirectory() as out_dir:
        args = (free_port(), backend, num_bytes, repeats, out_dir)
        mp.spawn(_flat_broadcast_rank, args=args, nprocs=2)
        return statistics.median(torch.load(Path(out_dir) / "times.pt"))


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
    parser.add_argument(
        "--publish-repeats", type=int, default=15, help="publishes and flat broadcasts timed (medians, ~40 ms each)"
    )
    parser.add_argument("--publish-hidden-size", type=int, default=512, help="width of the publishing model")
    parser.add_argument("--publish-num-layers", type=int, default=8, help="depth of the publishing model")
    parser.add_argument(
        "--publish-format",
        default="auto",
        choices=("auto", "flattened_bucket", "per_tensor"),
        help="trainer.weight_sync_format of the publish",
    )
    parser.add_argument("--long-tail-samples", type=int, default=64)
    parser.add_argument("--long-tail-median", type=int, default=32, help="median response tokens of the long tail")
    parser.add_argument("--long-tail-sigma", type=float, default=1.0, help="log-std of the lognormal lengths")
    parser.add_argument("--long-tail-cap", type=int, default=512, help="longest response (max_new_tokens)")
    parser.add_argument("--long-tail-micro-batch", type=int, default=8, help="rows per padded micro-batch")
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
        batch = make_batch(args.prompt_len, [args.response_len] * args.num_samples, vocab)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        train = {}
        for tp in [tp for tp in (1, 2) if not gpus or tp <= gpus]:
            cfg = TrainerConfig(tensor_model_parallel_size=tp, micro_batch_size=4, lr=1e-4)
            result = run(model_path, cfg, batch, args.repeats, None)
            tokens_per_s = statistics.median(result["tokens_per_s"])
            train[f"tp{tp}"] = {"processes": tp, "train_tokens_per_s": tokens_per_s}
        # Long tail: the same micro-batch token capacity (rows x longest input) both ways; padded, every
        # micro-batch is `micro_batch_size` rows of the batch's longest sample; budgeted, sorted samples share it.
        lengths = long_tail_lengths(
            args.long_tail_samples, args.long_tail_median, args.long_tail_sigma, args.long_tail_cap
        )
        tail_batch = make_batch(args.prompt_len, lengths, vocab)
        capacity = args.long_tail_micro_batch * (args.prompt_len + max(lengths) - 1)
        long_tail = {}
        for name, cfg in (
            ("padded", TrainerConfig(micro_batch_size=args.long_tail_micro_batch, lr=1e-4)),
            (
                "token_budget",
                TrainerConfig(micro_batch_size=len(lengths), max_tokens_per_micro_batch=capacity, lr=1e-4),
            ),
        ):
            long_tail[name] = statistics.median(run(model_path, cfg, tail_batch, args.repeats, None)["tokens_per_s"])
        # Publishing is measured on a model large enough for the transfer to dominate (>= 100 MB by default).
        publish_model = str(
            make_toy_model(
                Path(tmp) / "publish_model",
                hidden_size=args.publish_hidden_size,
                num_layers=args.publish_num_layers,
                num_heads=8,
                num_kv_heads=4,
                intermediate_size=args.publish_hidden_size * 3,
            )
        )
        transport = "disk" if gpus == 1 else "distributed"
        engine_device = f"cuda:{gpus - 1}" if gpus else "cpu"
        engine = EngineProcess(
            EngineConfig(device=engine_device, max_running_requests=4, max_context_len=128), publish_model
        )
        try:
            trainer_cfg = TrainerConfig(
                weight_sync=transport, weight_sync_format=args.publish_format, checkpoint_dir=f"{tmp}/checkpoints"
            )
            small_batch = make_batch(args.prompt_len, [8] * 2, vocab)
            result = run(publish_model, trainer_cfg, small_batch, args.publish_repeats, engine.start())
        finally:
            engine.stop()
    bandwidth = memcpy_bandwidth_bytes_per_s()
    publish_s = statistics.median(result["publish_s"])
    num_bytes = int(result["bytes"][0])
    # The baseline: the same bytes as one flat buffer over a plain broadcast between two processes, same backend.
    backend = "nccl" if gpus >= 2 else "gloo"
    flat_s = flat_broadcast_seconds(num_bytes, backend, args.publish_repeats) if transport == "distributed" else None
    report = {
        "benchmark": "trainer_step",
        "model": {"hidden_size": args.hidden_size, "num_layers": args.num_layers, "num_params": num_params},
        "batch": {"num_samples": args.num_samples, "tokens_per_sample": args.prompt_len + args.response_len},
        "train": train,
        "tp2_over_tp1": train["tp2"]["train_tokens_per_s"] / train["tp1"]["train_tokens_per_s"]
        if "tp2" in train
        else None,
        "long_tail": {
            "num_samples": len(lengths),
            "response_len": {"median": float(np.median(lengths)), "max": max(lengths), "mean": float(np.mean(lengths))},
            "micro_batch_token_capacity": capacity,
            "padded_tokens_per_s": long_tail["padded"],
            "token_budget_tokens_per_s": long_tail["token_budget"],
        },
        "packed_over_padded": long_tail["token_budget"] / long_tail["padded"],
        "device": f"{gpus} x {torch.cuda.get_device_name(0)}" if gpus else "cpu",
        "publish": {
            "engines": 1,
            "transport": transport if transport == "disk" else f"{'nccl' if gpus else 'gloo'} broadcast",
            "send_format": args.publish_format,
            "update_calls": int(result["calls"][0][0]),  # buckets
            "broadcasts": int(result["calls"][0][1]),  # one per bucket flattened, one per tensor otherwise
            "packed_bytes": int(result["calls"][0][2]),  # rank 0's packing copy (0: all sent from where it lies)
            "engine_device": engine_device,
            "publish_time_s": publish_s,
            "gather_time_s": statistics.median(result["gather_s"]),  # Megatron -> HF names and layouts, TP gather
            "bytes": num_bytes,
            "memcpy_bytes_per_s": bandwidth,
            "publish_efficiency": (num_bytes / bandwidth) / publish_s,
            "flat_broadcast_time_s": flat_s,
            "flat_broadcast_backend": backend if flat_s is not None else None,
        },
        "publish_gb_per_s": num_bytes / publish_s / 1e9,
        "publish_over_flat_broadcast": flat_s / publish_s if flat_s is not None else None,
        "repeats": args.repeats,
        "publish_repeats": args.publish_repeats,
        "hardware": hardware_info(),
        "git_commit": git_commit(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
