"""Actor body of the rollout side: builds a `RolloutManager` from config inside its own process.

The plain manager takes built objects (clients, buffer, reward, dataset, the generate hook with its
tokenizer and one `ToolRegistry`); this shell builds them where they are used, so nothing heavier than
config crosses the Ray boundary. It also runs held-out evals.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from slime_rl.buffer.dataset import PromptDataset, fill_prompts
from slime_rl.buffer.demonstrations import DemonstrationDataset
from slime_rl.buffer.store import RedisBuffer
from slime_rl.config.buffer import DataConfig
from slime_rl.config.eval import EvalConfig
from slime_rl.config.rollout import RolloutConfig
from slime_rl.config.tools import ToolsConfig
from slime_rl.engines.client import EngineClient
from slime_rl.engines.protocol import served_context_len
from slime_rl.errors import ServiceError
from slime_rl.orchestration.cluster import Located
from slime_rl.rollout.evaluate import evaluate_greedy
from slime_rl.rollout.filters import make_group_filter
from slime_rl.rollout.hook import TokenizerCodec, make_generation
from slime_rl.rollout.manager import RolloutManager
from slime_rl.rollout.rewards.hub import make_reward_fn
from slime_rl.rollout.streaming import StreamingRollout
from slime_rl.rollout.tools.registry import ToolRegistry
from slime_rl.rollout.tools.sandbox import Sandbox
from slime_rl.types import Sample

logger = logging.getLogger(__name__)


def context_len(model_path: str, server_infos: list[dict[str, Any]]) -> int | None:
    """Tokens per sequence (prompt + response) every engine accepts: the least any `/get_server_info` declares,
    else the model's `max_position_embeddings` (what SGLang serves without `--context-length`); None if
    neither says."""
    declared = [n for n in map(served_context_len, server_infos) if n is not None]
    if declared:
        return min(declared)
    from transformers import AutoConfig

    positions = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    return int(positions) if positions else None


def engine_context_len(engine_urls: list[str], model_path: str, *, timeout_s: float) -> int | None:
    """`context_len` of the engines at `engine_urls`, asked now. Blocks; callable inside a running event loop."""

    async def server_infos() -> list[dict[str, Any]]:
        clients = [EngineClient(url, timeout_s=timeout_s) for url in engine_urls]
        try:
            return list(await asyncio.gather(*(client.get_server_info() for client in clients)))
        finally:
            for client in clients:
                await client.aclose()

    # Ray runs an async actor's __init__ inside the actor's event loop, where asyncio.run is refused: ask from
    # a thread with its own loop (fresh clients, since httpx pools belong to the loop that opened them).
    with ThreadPoolExecutor(max_workers=1) as pool:
        infos = pool.submit(asyncio.run, server_infos()).result()
    return context_len(model_path, infos)


def check_tool_isolation(cfg: ToolsConfig) -> None:
    """Raise `ConfigError` now if sandboxed tools could not run here (no network block and one is required).

    Probes with a throwaway `Sandbox` on a thread with its own event loop (callable inside a running loop).
    """
    with ThreadPoolExecutor(max_workers=1) as pool:
        support = pool.submit(asyncio.run, Sandbox(cfg).check_isolation()).result()
    logger.info("tool sandbox: %s", support.describe())


class StreamNotRunning(ServiceError):
    """A stream call reached a worker without a stream: Ray restarted it after it died mid-run."""


class RolloutWorker(Located):
    """One per run. `generate(version)` fills the buffer for one step; `evaluate(version)` runs the eval set."""

    def __init__(
        self,
        rollout: RolloutConfig,
        data: DataConfig,
        evaluation: EvalConfig,
        *,
        model_path: str,
        router_url: str,
        engine_urls: list[str],
        redis_url: str,
        run_id: str,
        max_staleness: int | None,
        request_timeout_s: float,
        seed: int,
        lease_s: float,
        tools: ToolsConfig | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_path)
        # The groups this worker takes are leased to it; the heartbeat thread keeps the lease alive while the
        # process lives (even while its event loop is busy), so they return to the buffer only if it dies.
        self.buffer = RedisBuffer.from_url(
            redis_url, run_id, max_staleness=max_staleness, owner=f"rollout-{uuid.uuid4().hex}", lease_s=lease_s
        )
        self.buffer.start_heartbeat()
        # Prompts the engines would refuse (HTTP 400) are bad rows, caught at load with their file and line.
        context = engine_context_len(engine_urls, model_path, timeout_s=request_timeout_s)
        self.dataset = PromptDataset(
            data,
            self.tokenizer,
            n_samples_per_prompt=rollout.n_samples_per_prompt,
            seed=seed,
            context_len=context,
            max_new_tokens=rollout.max_new_tokens,
        )
        self.reward_fn = make_reward_fn(rollout.reward)
        tools_cfg = tools or ToolsConfig()
        if rollout.generate.kind == "multi_turn":
            check_tool_isolation(tools_cfg)
        self.tools = ToolRegistry(tools_cfg)  # one per worker: every sample's tool calls share its sandbox
        generation = make_generation(
            rollout.generate, codec=TokenizerCodec(self.tokenizer), tools=self.tools, tools_cfg=tools_cfg
        )
        self.request_timeout_s = request_timeout_s
        self.router = EngineClient(router_url, timeout_s=request_timeout_s)
        self.manager = RolloutManager(
            rollout,
            router=self.router,
            engines=[self.control_client(url) for url in engine_urls],
            buffer=self.buffer,
            refill_prompts=lambda n: fill_prompts(self.buffer, self.dataset, n),
            reward_fn=self.reward_fn,
            decode=self.decode,
            group_filter=make_group_filter(rollout.dynamic_filter),
            generation=generation,
        )
        self.stream: StreamingRollout | None = None  # fully async only, from `start_stream`
        self.eval_samples: list[Sample] = []
        self.demonstrations: DemonstrationDataset | None = None  # the SFT stage's, from `sft_samples`
        self.eval_max_new_tokens = evaluation.max_new_tokens or rollout.max_new_tokens
        if evaluation.path:
            eval_cfg = dataclasses.replace(data, path=evaluation.path, shuffle=False)
            eval_set = PromptDataset(
                eval_cfg,
                self.tokenizer,
                n_samples_per_prompt=1,
                seed=seed,
                context_len=context,
                max_new_tokens=self.eval_max_new_tokens,
            )
            rows = range(min(len(eval_set), evaluation.max_prompts))
            self.eval_samples = [eval_set.make_group(row).samples[0] for row in rows]

    def control_client(self, url: str) -> EngineClient:
        """A client for one engine's control calls (abort, loads). No retries: the caller repeats aborts until
        nothing runs, and a refused connection means the engine is down, which the engine monitor handles."""
        return EngineClient(url, timeout_s=self.request_timeout_s, max_retries=0)

    async def set_engines(self, engine_urls: list[str]) -> None:
        """The engines now serving (the driver's fleet changed): only they are aborted and asked for loads."""
        await self.manager.serving.update([self.control_client(url) for url in engine_urls])
        logger.info("serving engines: %s", ", ".join(engine_urls) or "none")

    def decode(self, ids: np.ndarray) -> str:
        return self.tokenizer.decode(ids.tolist(), skip_special_tokens=True)

    def start_profiling(self) -> None:
        """Record every `/generate` through the router and the manager's step/buffer/reward/abort intervals."""
        self.router.lifecycles = []
        self.manager.timeline = []

    def take_profile(self) -> tuple[list[tuple], list[tuple[str, float, float]]]:
        """The request records and intervals since the last call (see `start_profiling`), then empties them."""
        requests, self.router.lifecycles = self.router.lifecycles or [], []
        timeline, self.manager.timeline = self.manager.timeline or [], []
        return requests, timeline

    async def generate(self, version: int, num_groups: int | None = None) -> dict[str, float]:
        return await self.manager.generate(version, num_groups)

    async def start_stream(self, version: int, max_staleness: int) -> None:
        """Start fully-async generation in the background (see `StreamingRollout`).

        Groups already published and waiting in the buffer (a resumed run's) count as accepted, so the
        staleness bound holds across a restart.
        """
        num_buffered = self.buffer.queue_lengths()["samples"]
        self.stream = StreamingRollout(
            self.manager, max_staleness=max_staleness, version=version, num_buffered=num_buffered
        )
        self.stream_task = asyncio.create_task(self.stream.run())

    def _running_stream(self) -> StreamingRollout:
        if self.stream is None:
            raise StreamNotRunning("this rollout worker has no stream (it was restarted after it died)")
        return self.stream

    async def check_stream(self) -> None:
        """Raise the error that ended the stream, if one did (the trainer calls it while it waits for data)."""
        self._running_stream().raise_if_failed()

    async def pause_stream(self) -> float:
        """Interrupt generation for a weight update; returns the seconds the abort took."""
        stream = self._running_stream()
        stream.raise_if_failed()
        return await stream.pause()

    async def resume_stream(self, version: int) -> dict[str, float]:
        """Continue under weights `version`; returns the stream's counts so far (one round trip per step)."""
        self._running_stream().resume(version)
        return self.stream_metrics()

    async def stop_stream(self) -> dict[str, float]:
        """End the stream (in-flight groups go back to the buffer) and return its counts."""
        stream = self._running_stream()
        await stream.stop()
        await asyncio.wait([self.stream_task])
        stream.raise_if_failed()
        return self.stream_metrics()

    def stream_metrics(self) -> dict[str, float]:
        stream = self._running_stream()
        stats = {f"rollout/{key}": float(value) for key, value in stream.stats.items()}
        return stats | {"async/engine_idle_s": stream.engine_idle_s}

    async def evaluate(self, version: int) -> dict[str, float]:
        if not self.eval_samples:
            return {}
        fresh = [
            Sample(uid=s.uid, group_id=s.group_id, index=0, prompt_ids=s.prompt_ids, label=s.label)
            for s in self.eval_samples
        ]
        return await evaluate_greedy(
            self.router,
            fresh,
            generation=self.manager.generation,
            reward_fn=self.reward_fn,
            decode=self.decode,
            max_new_tokens=self.eval_max_new_tokens,
            version=version,
        )

    def sft_samples(self, path: str, *, seed: int, step: int, batch_size: int) -> list[Sample]:
        """Step `step`'s demonstrations of the supervised stage, from the JSONL at `path` (read on first use)."""
        if self.demonstrations is None or self.demonstrations.path != Path(path):
            self.demonstrations = DemonstrationDataset(path, self.tokenizer, seed=seed)
        return self.demonstrations.batch(step, batch_size)
