"""Publishing trainer weights to rollout engines over the SGLang weight-update protocol.

Global rank 0 gathers the model under HF names (`weights.gather_hf_state_dict`, collective over the
trainer group) and sends it to every engine, either
- `distributed`: through a weight-update process group (trainer = rank 0, engine i = rank 1 + i; gloo
  on CPU, NCCL on GPU) built once beside Megatron's groups: for each bucket of at most
  `weight_sync_bucket_mb`, rank 0 posts `/update_weights_from_distributed` to every engine and then
  broadcasts the bucket's tensors in the posted order; or
- `disk`: an HF safetensors directory under `{checkpoint_dir}/publish/` and `/update_weights_from_disk`.
The new weight version goes with the last bucket, so an engine reports it only once it holds every
tensor; afterwards every engine's `/get_weight_version` is checked.

Each engine is assumed to be one rank of the group (the native engine; SGLang with TP=1). HTTP calls run
on a helper thread with its own event loop while the calling thread does the collective.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from slime_rl.engines.client import EngineClient
from slime_rl.errors import ServiceError
from slime_rl.processes import free_port
from slime_rl.trainer import weights
from slime_rl.trainer.cpu_compat import has_cuda

if TYPE_CHECKING:
    from slime_rl.trainer.trainer import MegatronTrainer

logger = logging.getLogger(__name__)

GROUP_NAME = "slime_rl_weights"


class _Background:
    """Runs coroutines against every engine on a helper thread; `join` returns results or re-raises."""

    def __init__(self, urls: list[str], call: Callable[[EngineClient, int], Awaitable[Any]]) -> None:
        self.results: list[Any] = []
        self.error: BaseException | None = None

        async def run_all() -> list[Any]:
            clients = [EngineClient(url) for url in urls]
            try:
                return await asyncio.gather(*(call(c, i) for i, c in enumerate(clients)))
            finally:
                await asyncio.gather(*(c.aclose() for c in clients))

        def target() -> None:
            try:
                self.results = asyncio.run(run_all())
            except BaseException as err:  # handed to the caller's thread in join()
                self.error = err

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def join(self) -> list[Any]:
        self.thread.join()
        if self.error is not None:
            raise ServiceError(f"weight publish failed: {self.error}") from self.error
        return self.results


class WeightPublisher:
    """Rank 0's side of the weight-update groups, one per set of engine URLs, kept across publishes."""

    def __init__(self, master_addr: str, bucket_bytes: int, timeout_s: float = 600.0) -> None:
        self.master_addr = master_addr
        self.bucket_bytes = bucket_bytes
        self.timeout = timedelta(seconds=timeout_s)
        self._groups: dict[tuple[str, ...], tuple[Any, Any]] = {}  # urls -> (store, process group)

    def _group(self, urls: list[str]) -> Any:
        key = tuple(urls)
        if key not in self._groups:
            port, world = free_port(self.master_addr), len(urls) + 1
            backend = "nccl" if has_cuda() else "gloo"
            store = dist.TCPStore(  # engines connect once they get the request below
                self.master_addr, port, world, is_master=True, timeout=self.timeout, wait_for_workers=False
            )
            joins = _Background(
                urls,
                lambda c, i: c.init_weights_update_group(
                    master_address=self.master_addr,
                    master_port=port,
                    rank_offset=1 + i,
                    world_size=world,
                    group_name=GROUP_NAME,
                    backend=backend,
                ),
            )
            if backend == "gloo":
                group = dist.ProcessGroupGloo(store, 0, world, self.timeout)
            else:
                group = dist.ProcessGroupNCCL(store, 0, world)
            joins.join()
            self._groups[key] = (store, group)
        return self._groups[key][1]

    def _buckets(self, tensors: dict[str, torch.Tensor]) -> list[list[tuple[str, torch.Tensor]]]:
        buckets: list[list[tuple[str, torch.Tensor]]] = [[]]
        size = 0
        for name, tensor in tensors.items():
            nbytes = tensor.numel() * tensor.element_size()
            if buckets[-1] and size + nbytes > self.bucket_bytes:
                buckets.append([])
                size = 0
            buckets[-1].append((name, tensor))
            size += nbytes
        return buckets

    def broadcast(self, urls: list[str], tensors: dict[str, torch.Tensor], version: int) -> int:
        """Send `tensors` to every engine through the weight-update group; returns the number of buckets."""
        group = self._group(urls)
        device = torch.device("cuda", torch.cuda.current_device()) if has_cuda() else torch.device("cpu")
        options = dist.BroadcastOptions()
        options.rootRank = 0
        buckets = self._buckets(tensors)
        for index, bucket in enumerate(buckets):
            is_last = index == len(buckets) - 1
            posts = _Background(
                urls,
                lambda c, _i, bucket=bucket, is_last=is_last: c.update_weights_from_distributed(
                    names=[n for n, _ in bucket],
                    dtypes=[str(t.dtype).removeprefix("torch.") for _, t in bucket],
                    shapes=[list(t.shape) for _, t in bucket],
                    group_name=GROUP_NAME,
                    weight_version=str(version) if is_last else None,
                ),
            )
            for _, tensor in bucket:
                group.broadcast([tensor.to(device).contiguous()], options).wait()
            posts.join()
        return len(buckets)


def publish(trainer: MegatronTrainer, engine_urls: list[str], version: int) -> dict[str, float]:
    """Gather the weights and send them to `engine_urls` as `version` (collective over the trainer group).

    Returns `weights/...` metrics on global rank 0 and an empty dict on the other ranks.
    """
    start = time.perf_counter()
    hf = weights.gather_hf_state_dict(trainer.model, trainer.arch, trainer.layout)
    if hf is None:
        return {}
    gathered = time.perf_counter()
    cfg = trainer.cfg
    num_bytes = sum(t.numel() * t.element_size() for t in hf.values())
    if cfg.weight_sync == "disk":
        root = Path(cfg.checkpoint_dir) / "publish" if cfg.checkpoint_dir else Path(tempfile.gettempdir())
        path = weights.write_hf_dir(hf, root / f"v{version}", side_files_from=trainer.model_cfg.path)
        _Background(
            engine_urls, lambda c, _i: c.update_weights_from_disk(str(path), weight_version=str(version))
        ).join()
        num_buckets = 1
    else:
        if trainer.publisher is None:
            trainer.publisher = WeightPublisher(trainer.master_addr, cfg.weight_sync_bucket_mb << 20)
        num_buckets = trainer.publisher.broadcast(engine_urls, hf, version)
    versions = _Background(engine_urls, lambda c, _i: c.get_weight_version()).join()
    if any(v != str(version) for v in versions):
        raise ServiceError(f"engines report weight versions {versions} after publishing version {version}")
    done = time.perf_counter()
    logger.info(
        "published version %d (%d bytes) to %d engines in %.3fs", version, num_bytes, len(engine_urls), done - start
    )
    return {
        "weights/publish_time_s": done - start,
        "weights/gather_time_s": gathered - start,
        "weights/send_time_s": done - gathered,
        "weights/bytes": float(num_bytes),
        "weights/num_buckets": float(num_buckets),
        "weights/version": float(version),
    }
