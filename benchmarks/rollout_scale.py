"""How far one rollout worker scales over simulated engines, and APRIL against the work-conserving bound.

Prints one JSON object. Path measured: the rollout worker's own code path without Ray (`RolloutManager.generate`
over an `EngineClient` to the real sglang-router and one control client per engine, as `RolloutWorker` builds
them, with the real embedded Redis buffer), in a subprocess pinned to one core (`os.sched_setaffinity`); every
other process of the benchmark (the simulated engines, all in one process via `SimulatedEngines`, the router,
Redis) is pinned to the other cores.

1. Scale (`curve`): for 1, 4, 16, 64 and 256 engines, `--scale-steps` rollout steps of `--scale-groups` groups
   x `--n-samples-per-prompt` short responses (`--scale-tokens` tokens each, no EOS earlier) from engines whose
   cost model is near zero (`--scale-step-ms` per decode step): the rollout side is the work. Per engine count:
   requests/s over the steps' wall time, the worker's CPU microseconds per request (process CPU time /
   requests) and its CPU utilisation (CPU time / wall time: near 1.0 means the worker's core is what limits),
   and the engine process's utilisation the same way. `requests_per_s_one_core` is the best point of the
   curve, `cpu_us_per_request` its CPU cost (so 1e6 / cpu_us_per_request is what one core could sustain
   if nothing else limited it); `saturates_at_engines` is the smallest engine count within 5% of the best.
   At the last engine count the worker also runs once under cProfile (`worker_cpu_shares_cprofile`: the share
   of its time in the HTTP client, the event loop, Redis, slime_rl) and sends the same `/generate` requests
   through `EngineClient` and through a bare aiohttp session (`http_client`: CPU us per request of each).
   The baseline measured in the same run is the curve's first point (one engine).

2. APRIL (`april`): 64 engines, `--april-slots` rows each (max_running_requests), a decode step costs
   `a = --april-step-ms` whatever the rows (b = c = d = e = 0: prefill is free), response lengths lognormal
   (median `--april-median`, sigma `--april-sigma`, capped at `--april-max-new-tokens`). Requests in flight:
   `--april-groups` groups per step without APRIL, `--april-over-sampling` groups' worth with it (each x
   `--n-samples-per-prompt`), all sent at once (max_concurrent_requests), so each engine holds a queue as
   well as its running rows. The work-conserving bound is the throughput if every engine slot stayed busy
   with useful tokens: an engine step gives each running row one token and takes `a`, so 64 x slots / a
   decode tokens/s. (A fresh request's first token comes with its free prefill, outside that count; so the
   measured side counts decode tokens: every token the worker got back in the timed steps, all kept since
   partials resume and nothing restarts, minus the first token of each request whose input was its bare
   prompt.) A run of D decode tokens could at best have taken D / bound seconds; `share_of_bound` =
   (D / wall time) / bound, for APRIL off and on; `april_share_of_bound_64` is APRIL on's. What a step costs
   besides decoding shows in `abort_wait_s` (the target met, until every aborted request has answered; all 64
   engines answer on the one core of their process here, where a cluster's engines answer in parallel) and in
   `mean_requests_in_flight` (against 64 x slots: below it, slots idle).

Nothing is asserted; every figure comes from this run, on this machine (`hardware`, `git_commit`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from slime_rl.buffer.server import EmbeddedRedis
from slime_rl.buffer.store import RedisBuffer
from slime_rl.config import BufferConfig
from slime_rl.config.engine import EngineConfig, SimulatedEngineConfig
from slime_rl.config.rollout import RolloutConfig, groups_in_flight
from slime_rl.engines.client import EngineClient
from slime_rl.engines.protocol import GenerateOutput, GenerateRequest, SamplingParams
from slime_rl.engines.router import Router
from slime_rl.engines.simulated.launcher import SimulatedEngines
from slime_rl.observability.environment import git_commit, hardware_info
from slime_rl.rollout.manager import RolloutManager
from slime_rl.types import Group, Sample

ENGINE_COUNTS = (1, 4, 16, 64, 256)
VOCAB, EOS = 1000, 2
WORKER_CORE = 0
PROMPT_LEN = 13  # tokens of every benchmark prompt


def report_progress(message: str) -> None:
    print(f"[rollout_scale] {message}", file=sys.stderr, flush=True)


# --- the rollout worker (a subprocess pinned to one core) ------------------------------------------------------


def prompt_groups(num_groups: int, n: int, seed: int) -> list[Group]:
    groups = []
    for g in range(num_groups):
        gid = f"s{seed}-g{g:06d}"
        prompt = [1] + [4 + (g * 7 + k * 13) % 900 for k in range(PROMPT_LEN - 1)]
        samples = [Sample(uid=f"{gid}-{i}", group_id=gid, index=i, prompt_ids=prompt) for i in range(n)]
        groups.append(Group(group_id=gid, samples=samples))
    return groups


async def zero_reward(samples, responses) -> list[float]:
    return [0.0] * len(samples)


async def drive(spec: dict) -> dict:
    """`spec["steps"]` timed rollout steps after one warm-up step; returns counts, wall and CPU time."""
    cfg = RolloutConfig(**spec["rollout"])
    buffer = RedisBuffer.from_url(spec["redis_url"], f"rollout-scale-{uuid.uuid4().hex[:8]}")
    steps = spec["steps"]
    buffer.put_prompts(prompt_groups((steps + 2) * groups_in_flight(cfg) * 2, cfg.n_samples_per_prompt, 0))
    timeout_s = 600.0
    router = EngineClient(spec["router_url"], timeout_s=timeout_s)
    engines = [EngineClient(url, timeout_s=timeout_s, max_retries=0) for url in spec["engine_urls"]]
    manager = RolloutManager(
        cfg,
        router=router,
        engines=engines,
        buffer=buffer,
        refill_prompts=lambda n: None,
        reward_fn=zero_reward,
        decode=lambda ids: "",
    )
    try:
        await manager.generate(0)  # warm-up: connections, first-call costs
        router.lifecycles = []  # one record per answered /generate from here on (REQUEST_RECORD in client.py)
        samples, abort_wait_s = 0, 0.0
        wall, cpu = time.perf_counter(), time.process_time()
        for step in range(1, steps + 1):
            metrics = await manager.generate(step)
            samples += int(metrics["rollout/samples"])
            abort_wait_s += metrics["rollout/abort_wait_s"]
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        records = router.lifecycles
        unaccounted = buffer.snapshot()["unaccounted"]
    finally:
        await router.aclose()
        for engine in engines:
            await engine.aclose()
        buffer.clear()
        buffer.close()
    # Record fields: rid, sent, done, prompt_tokens, completion_tokens, ... A request whose input is the bare prompt
    # (not a resumed partial) gets its first token from the prefill, outside the decode steps.
    generated = sum(r[4] for r in records)
    request_seconds = sum(r[2] - r[1] for r in records)  # summed over requests: / wall = mean requests in flight
    fresh_first_tokens = sum(1 for r in records if r[3] == PROMPT_LEN and r[4] > 0)
    return {
        "samples": samples,
        "requests": len(records),
        "abort_wait_s": abort_wait_s,
        "generated_tokens": generated,
        "decode_tokens": generated - fresh_first_tokens,
        "wall_s": wall,
        "mean_requests_in_flight": request_seconds / wall,
        "cpu_s": cpu,
        "unaccounted_groups": unaccounted,
    }


async def transports(spec: dict) -> dict:
    """CPU per request of the same `/generate` requests through `EngineClient.generate` (the rollout path, over
    aiohttp) and through a bare aiohttp session, `spec["concurrency"]` in flight: how much of the worker's cost is the
    HTTP client's."""
    import aiohttp

    num, concurrency, url = spec["requests"], spec["concurrency"], spec["router_url"]
    prompt = list(range(1, 14))
    body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": spec["max_new_tokens"]}, "return_logprob": True}

    async def timed(one) -> float:
        semaphore = asyncio.Semaphore(concurrency)

        async def bounded(i: int) -> None:
            async with semaphore:
                await one(i)

        await asyncio.gather(*(bounded(i) for i in range(concurrency)))  # warm-up: connections
        cpu = time.process_time()
        await asyncio.gather(*(bounded(i) for i in range(num)))
        return (time.process_time() - cpu) / num * 1e6

    async with EngineClient(url) as client:
        sampling = SamplingParams(max_new_tokens=spec["max_new_tokens"])

        async def via_client(i: int) -> None:
            request = GenerateRequest(input_ids=prompt, sampling_params=sampling, rid=f"h{i}", return_logprob=True)
            await client.generate(request)

        client_us = await timed(via_client)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def via_aiohttp(i: int) -> None:
            async with session.post(f"{url}/generate", json={**body, "rid": f"a{i}"}) as response:
                GenerateOutput.from_json(json.loads(await response.read()))

        aiohttp_us = await timed(via_aiohttp)
    return {"engine_client_cpu_us_per_request": client_us, "aiohttp_cpu_us_per_request": aiohttp_us}


CPU_GROUPS = {  # where a profiled worker's own time goes, by the file a function lives in
    "http_client (aiohttp, yarl, multidict)": ("/aiohttp/", "/yarl/", "/multidict/"),
    "asyncio event loop": ("/asyncio/",),
    "redis client": ("/redis/",),
    "slime_rl": ("/slime_rl/",),
    "C built-ins (socket I/O, json, ...)": ("~",),  # pstats files built-in functions under "~"
}


def profiled(spec: dict) -> dict:
    """`drive(spec)` under cProfile: the share of the worker's profiled time in each of `CPU_GROUPS` (cProfile
    slows Python code down, so these are shares, not times)."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    asyncio.run(drive(spec))
    profile.disable()
    by_group = dict.fromkeys([*CPU_GROUPS, "other"], 0.0)
    for (filename, _, _), (_, _, own_s, _, _) in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        group = next((g for g, parts in CPU_GROUPS.items() if any(p in filename for p in parts)), "other")
        by_group[group] += own_s
    total = sum(by_group.values()) or 1.0
    return {group: round(seconds / total, 3) for group, seconds in by_group.items()}


def worker_main(spec_path: str) -> None:
    os.sched_setaffinity(0, {WORKER_CORE})
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("transports"):
        result = asyncio.run(transports(spec))
    elif spec.get("profile"):
        result = profiled(spec)
    else:
        result = asyncio.run(drive(spec))
    print(json.dumps(result))


# --- the orchestration (engines, router, Redis on the other cores) ---------------------------------------------


def pin_children_off_worker_core() -> None:
    """Every process this benchmark started so far runs on the cores other than the worker's."""
    others = set(range(os.cpu_count() or 1)) - {WORKER_CORE}
    if not others:
        return
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):  # one that exited meanwhile
            child.cpu_affinity(sorted(others))


def run_worker(spec: dict, tmp: Path) -> dict:
    path = tmp / f"spec_{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(spec))
    out = subprocess.run(
        [sys.executable, __file__, "--worker", str(path)], capture_output=True, text=True, timeout=1800, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"rollout worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def engine_cfg(*, step_ms: float, slots: int, median: float, sigma: float, max_context: int) -> EngineConfig:
    sim = SimulatedEngineConfig(
        decode_step_base_ms=step_ms,
        decode_row_ms=0.0,
        decode_context_token_us=0.0,
        prefill_token_us=0.0,
        prefill_base_ms=0.0,
        length_median=median,
        length_sigma=sigma,
        vocab_size=VOCAB,
        eos_token_id=EOS,
        engines_per_process=max(ENGINE_COUNTS),
    )
    return EngineConfig(
        kind="simulated", max_running_requests=slots, max_context_len=max_context, startup_timeout_s=300, simulated=sim
    )


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def measure(
    cfg: EngineConfig,
    num_engines: int,
    rollout: dict,
    steps: int,
    redis_url: str,
    tmp: Path,
    *,
    router_policy: str = "round_robin",
    extra: dict | None = None,
) -> dict:
    """One worker run against `num_engines` simulated engines behind a fresh router; adds the engines' CPU use.
    `extra` (a transports spec) runs the HTTP client comparison afterwards on the same engines."""
    with SimulatedEngines(cfg, num_engines, log_dir=str(tmp)) as urls:
        router = Router(policy=router_policy, log_path=str(tmp / "router.log"))
        router.start(worker_urls=urls)
        try:
            deadline = time.monotonic() + 120
            while len(router.list_workers()) < num_engines and time.monotonic() < deadline:
                time.sleep(0.2)
            pin_children_off_worker_core()
            engine_procs = [
                p
                for p in psutil.Process().children(recursive=True)
                if "slime_rl.engines.simulated" in " ".join(p.cmdline())
            ]
            before = sum(cpu_seconds(p) for p in engine_procs)
            spec = {
                "rollout": rollout,
                "steps": steps,
                "redis_url": redis_url,
                "router_url": router.url,
                "engine_urls": urls,
            }
            result = run_worker(spec, tmp)
            after = sum(cpu_seconds(p) for p in engine_procs)
            if extra is not None:
                result["transports"] = run_worker({**extra, "transports": True, "router_url": router.url}, tmp)
                result["cpu_shares"] = run_worker({**spec, "profile": True}, tmp)
        finally:
            router.stop()
    result["engine_process_cpu_s"] = after - before
    return result


def scale_curve(args: argparse.Namespace, redis_url: str, tmp: Path) -> list[dict]:
    cfg = engine_cfg(
        step_ms=args.scale_step_ms, slots=args.scale_slots, median=args.scale_tokens, sigma=0.0, max_context=256
    )
    rollout = {
        "rollout_batch_size": args.scale_groups,
        "n_samples_per_prompt": args.n_samples_per_prompt,
        "max_new_tokens": args.scale_tokens,
        "max_concurrent_requests": args.scale_groups * args.n_samples_per_prompt,
    }
    curve = []
    for num_engines in args.engine_counts:
        extra = None
        if num_engines == args.engine_counts[-1]:
            requests = args.scale_groups * args.n_samples_per_prompt
            extra = {"requests": 2 * requests, "concurrency": requests, "max_new_tokens": args.scale_tokens}
        run = measure(cfg, num_engines, rollout, args.scale_steps, redis_url, tmp, extra=extra)
        requests = run["requests"]
        point = {
            "engines": num_engines,
            "requests": requests,
            "requests_per_s": round(requests / run["wall_s"], 1),
            "cpu_us_per_request": round(run["cpu_s"] / requests * 1e6, 1),
            "worker_cpu_utilisation": round(run["cpu_s"] / run["wall_s"], 3),
            "engine_process_cpu_utilisation": round(run["engine_process_cpu_s"] / run["wall_s"], 3),
            "unaccounted_groups": run["unaccounted_groups"],
        }
        if "transports" in run:
            point["http_client"] = {k: round(v, 1) for k, v in run["transports"].items()}
            point["worker_cpu_shares_cprofile"] = run["cpu_shares"]
        curve.append(point)
        report_progress(
            f"{num_engines} engines: {point['requests_per_s']} requests/s, {point['cpu_us_per_request']} us CPU "
            f"per request, worker CPU {point['worker_cpu_utilisation']}, engines CPU "
            f"{point['engine_process_cpu_utilisation']}"
        )
    return curve


def april_runs(args: argparse.Namespace, redis_url: str, tmp: Path) -> dict:
    num_engines = args.april_engines
    cfg = engine_cfg(
        step_ms=args.april_step_ms,
        slots=args.april_slots,
        median=args.april_median,
        sigma=args.april_sigma,
        max_context=args.april_max_new_tokens + 64,
    )
    bound_tokens_per_s = num_engines * args.april_slots / (args.april_step_ms / 1e3)
    base = {
        "rollout_batch_size": args.april_groups,
        "n_samples_per_prompt": args.n_samples_per_prompt,
        "max_new_tokens": args.april_max_new_tokens,
        "max_concurrent_requests": args.april_over_sampling * args.n_samples_per_prompt,
    }
    modes = {"off": base, "on": {**base, "use_april": True, "over_sampling_batch_size": args.april_over_sampling}}
    out: dict = {"bound_tokens_per_s": bound_tokens_per_s}
    for mode, rollout in modes.items():
        run = measure(
            cfg, num_engines, rollout, args.april_steps, redis_url, tmp, router_policy=args.april_router_policy
        )
        decode_per_s = run["decode_tokens"] / run["wall_s"]
        out[mode] = {
            "generated_tokens": run["generated_tokens"],
            "decode_tokens": run["decode_tokens"],
            "requests": run["requests"],
            "samples": run["samples"],
            "seconds": round(run["wall_s"], 2),
            "abort_wait_s": round(run["abort_wait_s"], 2),
            "mean_requests_in_flight": round(run["mean_requests_in_flight"], 1),  # against 64 x slots
            "generated_tokens_per_s": round(run["generated_tokens"] / run["wall_s"], 1),
            "decode_tokens_per_s": round(decode_per_s, 1),
            "share_of_bound": round(decode_per_s / bound_tokens_per_s, 3),
            "worker_cpu_utilisation": round(run["cpu_s"] / run["wall_s"], 3),
            "engine_process_cpu_utilisation": round(run["engine_process_cpu_s"] / run["wall_s"], 3),
            "unaccounted_groups": run["unaccounted_groups"],
        }
        report_progress(f"APRIL {mode}: {out[mode]}")
    out["speedup"] = round(out["on"]["generated_tokens_per_s"] / out["off"]["generated_tokens_per_s"], 3)
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine-counts", type=int, nargs="+", default=list(ENGINE_COUNTS))
    parser.add_argument("--n-samples-per-prompt", type=int, default=8)
    parser.add_argument("--scale-steps", type=int, default=4, help="timed rollout steps per engine count")
    parser.add_argument("--scale-groups", type=int, default=128, help="groups per step (all in flight at once)")
    parser.add_argument("--scale-tokens", type=int, default=6, help="tokens per response")
    parser.add_argument("--scale-step-ms", type=float, default=0.2, help="a: ms per decode step (near zero)")
    parser.add_argument("--scale-slots", type=int, default=256, help="max_running_requests per engine")
    parser.add_argument("--april-engines", type=int, default=64)
    parser.add_argument("--april-steps", type=int, default=3)
    parser.add_argument("--april-groups", type=int, default=32, help="rollout_batch_size")
    parser.add_argument("--april-over-sampling", type=int, default=64, help="groups in flight with APRIL")
    parser.add_argument("--april-slots", type=int, default=4, help="max_running_requests per engine")
    parser.add_argument("--april-step-ms", type=float, default=20.0, help="a: ms per decode step")
    parser.add_argument("--april-median", type=float, default=64.0, help="median response length, tokens")
    parser.add_argument("--april-sigma", type=float, default=1.5, help="lognormal sigma of response lengths")
    parser.add_argument("--april-max-new-tokens", type=int, default=1024)
    parser.add_argument("--april-router-policy", default="round_robin", help="sglang-router policy of the APRIL runs")
    parser.add_argument("--skip-april", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name, EmbeddedRedis(BufferConfig(appendonly=False)) as redis:
        tmp = Path(tmp_name)
        curve = scale_curve(args, redis.url, tmp)
        april = None if args.skip_april else april_runs(args, redis.url, tmp)
    best = max(curve, key=lambda p: p["requests_per_s"])
    saturates = min(p["engines"] for p in curve if p["requests_per_s"] >= 0.95 * best["requests_per_s"])
    result = {
        "benchmark": "rollout_scale",
        "requests_per_s_one_core": best["requests_per_s"],
        "cpu_us_per_request": best["cpu_us_per_request"],
        "one_core_capacity_requests_per_s": round(1e6 / best["cpu_us_per_request"], 1),
        "april_share_of_bound_64": april["on"]["share_of_bound"] if april else None,
        "saturates_at_engines": saturates,
        "baseline_one_engine_requests_per_s": curve[0]["requests_per_s"],
        "curve": curve,
        "april": april,
        "workload": {k: v for k, v in vars(args).items()},
        "hardware": hardware_info(),
        "worker_core": WORKER_CORE,
        "git_commit": git_commit(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
