"""Buffer throughput: the full RedisBuffer path against a naive pickle + GET/SET baseline, in one run.

Full path, per repeat (on groups taken beforehand, untimed): encode -> XADD + HSET + lease release
(publish) -> XREADGROUP of the summaries through the trainer consumer group (read_batch, the driver's
part) -> HMGET of the payloads + decode (fetch_groups, a trainer rank's part) -> XACK + XDEL (ack), for
`groups x group_size` samples of 256 prompt and 1024 response tokens with logprobs and loss mask.
Baseline: the same samples held as Python lists, pickled per
group, SET / GET / DEL through pipelines. Repeats alternate between the two; medians are reported.

Prints one JSON object. Pickle appears here only as the naive comparison; the buffer never uses it.
Usage: .venv/bin/python benchmarks/buffer_throughput.py [--groups 256] [--group-size 8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import time
import uuid

import numpy as np
import redis

from slime_rl.buffer.server import EmbeddedRedis
from slime_rl.buffer.store import RedisBuffer
from slime_rl.config.buffer import BufferConfig
from slime_rl.observability.environment import git_commit, hardware_info
from slime_rl.types import Group, Sample, Status

PROMPT_TOKENS = 256
RESPONSE_TOKENS = 1024
CHUNK_GROUPS = 32  # groups per publish call and per read_batch call


def make_groups(num_groups: int, group_size: int, seed: int = 0) -> list[Group]:
    rng = np.random.default_rng(seed)
    groups = []
    for g in range(num_groups):
        group_id = uuid.uuid4().hex
        samples = [
            Sample(
                uid=uuid.uuid4().hex,
                group_id=group_id,
                index=i,
                prompt_ids=rng.integers(0, 150_000, PROMPT_TOKENS),
                response_ids=rng.integers(0, 150_000, RESPONSE_TOKENS),
                rollout_logprobs=-rng.exponential(1.0, RESPONSE_TOKENS),
                loss_mask=np.ones(RESPONSE_TOKENS),
                reward=float(g % 2),
                status=Status.COMPLETED,
                label="42",
                metadata={"source": "bench"},
                weight_spans=[(0, 0, RESPONSE_TOKENS)],
            )
            for i in range(group_size)
        ]
        groups.append(Group(group_id=group_id, samples=samples))
    return groups


def as_python_lists(groups: list[Group]) -> list[list[dict]]:
    """The naive representation: every per-token field a Python list."""
    return [
        [
            {
                "uid": s.uid,
                "group_id": s.group_id,
                "index": s.index,
                "prompt_ids": s.prompt_ids.tolist(),
                "response_ids": s.response_ids.tolist(),
                "rollout_logprobs": s.rollout_logprobs.tolist(),
                "loss_mask": s.loss_mask.tolist(),
                "reward": s.reward,
                "status": s.status.value,
                "label": s.label,
                "metadata": s.metadata,
                "weight_spans": s.weight_spans,
            }
            for s in g.samples
        ]
        for g in groups
    ]


def run_buffer(client: redis.Redis, groups: list[Group]) -> tuple[float, int]:
    """Seconds for the full path over all groups, and the number of samples the trainer received."""
    buffer = RedisBuffer(client, f"bench-{uuid.uuid4().hex}")
    buffer.put_prompts(groups)
    held = buffer.take_groups(len(groups))  # publish releases the taker's lease: only taken groups go through
    received = 0
    start = time.perf_counter()
    for i in range(0, len(held), CHUNK_GROUPS):
        buffer.publish(held[i : i + CHUNK_GROUPS], version=0)
        batch = buffer.read_batch("trainer-0", CHUNK_GROUPS, block_ms=1000, trainer_version=0)
        received += sum(len(g.samples) for g in buffer.fetch_groups(batch.entry_ids))  # as a trainer rank reads
        buffer.ack(batch)
    elapsed = time.perf_counter() - start
    buffer.clear()
    return elapsed, received


def run_baseline(client: redis.Redis, groups: list[list[dict]]) -> tuple[float, int]:
    prefix = f"naive-{uuid.uuid4().hex}:"
    received = 0
    start = time.perf_counter()
    for i in range(0, len(groups), CHUNK_GROUPS):
        chunk = groups[i : i + CHUNK_GROUPS]
        keys = [f"{prefix}{i + j}" for j in range(len(chunk))]
        pipe = client.pipeline(transaction=False)
        for key, group in zip(keys, chunk, strict=True):
            pipe.set(key, pickle.dumps(group, protocol=pickle.HIGHEST_PROTOCOL))
        pipe.execute()
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        read = [pickle.loads(data) for data in pipe.execute()]
        received += sum(len(g) for g in read)
        client.delete(*keys)
    return time.perf_counter() - start, received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=256, help="groups per repeat")
    parser.add_argument("--group-size", type=int, default=8, help="samples per group")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats of each path (after one warm-up)")
    parser.add_argument("--appendonly", action="store_true", help="run the embedded server with AOF persistence")
    args = parser.parse_args()

    groups = make_groups(args.groups, args.group_size)
    naive = as_python_lists(groups)
    num_samples = args.groups * args.group_size
    with EmbeddedRedis(BufferConfig(appendonly=args.appendonly)) as address:
        client = redis.Redis(host=address.host, port=address.port, password=address.password)
        server = client.info("server")
        run_buffer(client, groups[:CHUNK_GROUPS])  # warm-up: scripts loaded, connection open
        run_baseline(client, naive[:CHUNK_GROUPS])
        buffer_rates, baseline_rates, ratios = [], [], []
        for _ in range(args.repeats):
            seconds, received = run_buffer(client, groups)
            base_seconds, base_received = run_baseline(client, naive)
            if received != num_samples or base_received != num_samples:
                raise RuntimeError(f"delivered {received} (buffer) / {base_received} (baseline) of {num_samples}")
            buffer_rates.append(num_samples / seconds)
            baseline_rates.append(num_samples / base_seconds)
            ratios.append(buffer_rates[-1] / baseline_rates[-1])
        client.close()

    payload_bytes = PROMPT_TOKENS * 4 + RESPONSE_TOKENS * (4 + 4 + 1)
    result = {
        "benchmark": "buffer_throughput",
        "samples_per_s": round(statistics.median(buffer_rates)),
        "baseline_samples_per_s": round(statistics.median(baseline_rates)),
        "ratio": round(statistics.median(ratios), 2),
        "path": "encode -> XADD summary + HSET payload + HDEL lease -> XREADGROUP summaries (consumer group) -> "
        "HMGET payloads -> decode -> XACK + XDEL + HDEL payload",
        "baseline": "pickle of Python lists -> SET -> GET -> unpickle -> DEL (pipelined)",
        "samples_per_s_repeats": [round(r) for r in buffer_rates],
        "baseline_samples_per_s_repeats": [round(r) for r in baseline_rates],
        "repeats": args.repeats,
        "samples_per_repeat": num_samples,
        "group_size": args.group_size,
        "prompt_tokens": PROMPT_TOKENS,
        "response_tokens": RESPONSE_TOKENS,
        "token_bytes_per_sample": payload_bytes,
        "chunk_groups": CHUNK_GROUPS,
        "server": f"{server.get('server_name', 'redis')} {server.get('valkey_version', server.get('redis_version'))}",
        "appendonly": args.appendonly,
        "redis_py": redis.__version__,
        "hiredis": redis.utils.HIREDIS_AVAILABLE,
        "hardware": hardware_info(),
        "git_commit": git_commit(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
