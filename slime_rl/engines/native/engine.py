"""The native engine: tokenizer, model runner, scheduler and weight-update groups wired together.

Owns start-up (threads, model load) and the weight operations, which run on the model thread between
steps so no forward ever sees half-loaded weights. In-flight requests keep running across a weight
update (their K/V from the old weights is kept, like SGLang's `in_place` pause); callers that need
clean version boundaries abort or pause first. HTTP lives in app.py.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass

import torch
from transformers import AutoTokenizer, GenerationConfig

from slime_rl.engines.native.runner import ModelRunner, resolve_dtype
from slime_rl.engines.native.scheduler import Scheduler
from slime_rl.engines.native.weights import (
    ReceiveAbandoned,
    WeightUpdateGroups,
    parse_dtype,
    read_safetensors_dir,
)
from slime_rl.engines.tensor_bucket import FLATTENED_BUCKET

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class NativeEngineArgs:
    """Server arguments (the `python -m slime_rl.engines.native` flags)."""

    model_path: str
    host: str = "127.0.0.1"
    port: int = 30000
    device: str = "cpu"  # cpu | cuda | cuda:N
    dtype: str = "auto"  # auto = float32 on CPU, bfloat16 on CUDA
    max_running_requests: int = 64  # continuous-batching slots
    max_context_len: int = 2048  # prompt + response tokens per sequence (capped at the model's position limit)
    max_prefill_tokens: int = 4096  # prompt tokens prefilled per step (a longer single prompt still runs alone)
    num_threads: int = 1  # torch CPU threads
    seed: int = 0  # seed of the shared sampling generator
    weight_version: str = "default"  # reported until the first weight update sets another
    weight_sync_timeout_s: float = 600.0  # seconds a weight-update group may wait for its peers


def _eos_ids(model_path: str, tokenizer) -> set[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    try:
        configured = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:
        configured = None
    if configured is not None:
        ids.update([configured] if isinstance(configured, int) else configured)
    return ids


class NativeEngine:
    """One model served with continuous batching. Call `start()` before use and `stop()` after."""

    def __init__(self, args: NativeEngineArgs) -> None:
        self.args = args
        if args.device == "cpu":
            torch.set_num_threads(args.num_threads)
        self.tokenizer = AutoTokenizer.from_pretrained(args.model_path)
        self.runner = ModelRunner(
            args.model_path,
            device=args.device,
            dtype=resolve_dtype(args.dtype, args.device),
            num_slots=args.max_running_requests,
            max_len=args.max_context_len,
        )
        self.scheduler = Scheduler(
            self.runner,
            max_running_requests=args.max_running_requests,
            eos_token_ids=_eos_ids(args.model_path, self.tokenizer),
            max_prefill_tokens=args.max_prefill_tokens,
            weight_version=args.weight_version,
        )
        self.groups = WeightUpdateGroups(self.runner.device, args.weight_sync_timeout_s)

    def start(self) -> None:
        self.scheduler.start(self.args.seed)
        logger.info("native engine serving %s on %s", self.args.model_path, self.args.device)

    def stop(self) -> None:
        self.scheduler.stop()

    @property
    def weight_version(self) -> str:
        return self.scheduler.weight_version

    @property
    def vocab_size(self) -> int:
        return self.runner.vocab_size

    @property
    def max_context_len(self) -> int:
        """Tokens per sequence this engine serves: the configured value, capped at the model's positions."""
        return self.runner.max_len

    def server_info(self) -> dict:
        return {
            **asdict(self.args),
            "max_context_len": self.max_context_len,
            "max_total_num_tokens": self.args.max_running_requests * self.max_context_len,
        }

    async def _on_model_thread(self, fn):
        return await asyncio.wrap_future(self.scheduler.call(fn))

    async def update_weights_from_disk(self, model_path: str, weight_version: str | None) -> str:
        def load() -> str:
            count = self.runner.load_weights(read_safetensors_dir(model_path))
            if weight_version is not None:
                self.scheduler.set_weight_version(weight_version)
            return f"Loaded {count} tensors from {model_path}."

        return await self._on_model_thread(load)

    async def init_weights_update_group(
        self, *, master_address: str, master_port: int, rank_offset: int, world_size: int, group_name: str, backend: str
    ) -> str:
        # Joining blocks until all ranks arrive and touches no model state: run it on a worker thread.
        await asyncio.to_thread(
            self.groups.init_group,
            master_address=master_address,
            master_port=master_port,
            rank=rank_offset,
            world_size=world_size,
            group_name=group_name,
            backend=backend,
        )
        return f"Joined weight update group {group_name} as rank {rank_offset} of {world_size}."

    async def update_weights_from_distributed(
        self,
        *,
        names: list[str],
        dtypes: list[str],
        shapes: list[list[int]],
        group_name: str,
        weight_version: str | None,
        load_format: str | None = None,
    ) -> str:
        def receive_and_load() -> str:
            count = self._receive(group_name, names, dtypes, shapes, flattened=load_format == FLATTENED_BUCKET)
            if weight_version is not None:
                self.scheduler.set_weight_version(weight_version)
            return f"Received and loaded {count} tensors."

        return await self._on_model_thread(receive_and_load)

    def _receive(
        self, group_name: str, names: list[str], dtypes: list[str], shapes: list[list[int]], *, flattened: bool
    ) -> int:
        """Receive one update where the runner wants it (often the parameters themselves) and load it: a flattened
        bucket in one broadcast, else one broadcast per name (any other load_format, as SGLang reads them)."""
        layout = (
            tuple(names),
            tuple(parse_dtype(dtype) for dtype in dtypes),
            tuple(tuple(shape) for shape in shapes),
        )
        targets = [self.runner.bucket_buffer(layout)] if flattened else self.runner.tensor_targets(layout)
        try:
            self.groups.receive(group_name, targets, f"{len(names)} tensors ({names[0] if names else ''} ...)")
        except ReceiveAbandoned:
            if flattened:
                self.runner.release_bucket_buffer(layout)
            else:
                self.runner.release_targets(targets)
            raise
        return self.runner.load_bucket(layout, targets[0]) if flattened else self.runner.load_tensors(names, targets)

    async def destroy_weights_update_group(self, group_name: str) -> str:
        await asyncio.to_thread(self.groups.destroy, group_name)
        return f"Destroyed weight update group {group_name}."

    async def set_weight_version(self, version: str) -> None:
        await self._on_model_thread(lambda: self.scheduler.set_weight_version(version))

    async def flush_cache(self) -> bool:
        return await self._on_model_thread(self.scheduler.flush_cache)
