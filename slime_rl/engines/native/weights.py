"""Weight sources for the native engine: safetensors directories and torch.distributed update groups.

Owns reading HF-named tensors; loading them into the model is the runner's job. A weight-update group
follows SGLang (REFERENCE.md §1): the trainer is rank 0 and hosts the TCPStore; this engine, one rank
(TP=1), joins as rank `rank_offset` and builds its end exactly as SGLang's engine ranks do
(engines/weight_group.py), with gloo on CPU or NCCL on CUDA, and receives each tensor by broadcast from
rank 0 in the order of `names`, or a whole bucket in one broadcast (`load_format="flattened_bucket"`).

Destroying a group ends a receive that waits on it: when rank 0 gives up on a publish (another engine of
the group died before the broadcast), it destroys the group on the engines, and this engine's model thread
must not stay blocked in a broadcast that will never come. The pending gloo op itself lasts until the
group's timeout, and releasing a gloo group joins its worker thread, so the abandoned group is kept
(`_abandoned`) until its op has ended: otherwise whichever thread dropped the last reference would block.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open

from slime_rl.engines.tensor_bucket import FLATTENED_BUCKET, byte_ranges, unflatten
from slime_rl.engines.weight_group import connect_store, leave_group, new_group

logger = logging.getLogger(__name__)

BACKENDS = ("gloo", "nccl")
_DESTROY_POLL_S = 0.05  # how often a waiting receive checks whether its group was destroyed


@dataclass
class _Group:
    group: dist.ProcessGroup
    destroyed: threading.Event = field(default_factory=threading.Event)


def read_safetensors_dir(model_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield every tensor of every `*.safetensors` file in `model_path` (HF parameter names)."""
    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {model_path}")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open objects are not iterable
                yield name, f.get_tensor(name)


def parse_dtype(name: str) -> torch.dtype:
    """`"bfloat16"` or `"torch.bfloat16"` -> torch.bfloat16."""
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype {name!r} is not a torch dtype name")
    return dtype


class WeightUpdateGroups:
    """The weight-update process groups this engine has joined, by name."""

    def __init__(self, device: torch.device, timeout_s: float = 600.0) -> None:
        self.device = device
        self.timeout = timedelta(seconds=timeout_s)
        self._groups: dict[str, _Group] = {}
        self._abandoned: list[tuple[_Group, Any]] = []  # destroyed groups and their still pending work
        # Flattened buckets arrive here, reused across receives (a fresh buffer page-faults on every write);
        # dropped when a receive is abandoned, whose pending op keeps writing to its own.
        self._bucket_buffer: torch.Tensor | None = None

    def init_group(
        self, *, master_address: str, master_port: int, rank: int, world_size: int, group_name: str, backend: str
    ) -> None:
        """Join group `group_name` as `rank`. Blocks until every rank has joined (run it off the event loop)."""
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is unknown; choose one of {BACKENDS}")
        if group_name in self._groups:
            raise ValueError(f"weight update group {group_name!r} already exists; destroy it first")
        if backend == "nccl" and self.device.type != "cuda":
            raise ValueError("backend 'nccl' needs the engine on CUDA; use 'gloo' on CPU")
        store = connect_store(master_address, master_port, rank=rank, world_size=world_size, timeout=self.timeout)
        group = new_group(
            store, rank=rank, world_size=world_size, group_name=group_name, backend=backend, timeout=self.timeout
        )
        self._groups[group_name] = _Group(group)
        logger.info("joined weight update group %s as rank %d/%d (%s)", group_name, rank, world_size, backend)

    def receive(
        self,
        group_name: str,
        names: list[str],
        dtypes: list[str],
        shapes: list[list[int]],
        *,
        load_format: str | None = None,
    ) -> list[tuple[str, torch.Tensor]]:
        """Receive the tensors of `names` from rank 0: one broadcast per name, in order, or with
        `load_format="flattened_bucket"` one broadcast of all their bytes (engines/tensor_bucket.py); any other
        `load_format` is read per name, as SGLang does. Blocks until all have arrived, or raises `ValueError`
        once the group is destroyed meanwhile. A flattened bucket's tensors are views of a buffer that the next
        receive reuses: load them before receiving again."""
        if group_name not in self._groups:
            raise ValueError(f"no weight update group named {group_name!r}; call init_weights_update_group first")
        entry = self._groups[group_name]
        torch_dtypes = [parse_dtype(dtype) for dtype in dtypes]
        if load_format == FLATTENED_BUCKET:
            ranges = byte_ranges(torch_dtypes, shapes)
            num_bytes = ranges[-1][1] if ranges else 0
            if self._bucket_buffer is None or self._bucket_buffer.numel() < num_bytes:
                self._bucket_buffer = torch.empty(num_bytes, dtype=torch.uint8, device=self.device)
            buffer = self._bucket_buffer[:num_bytes]
            self._broadcast(entry, group_name, buffer, f"the flattened bucket of {len(names)} tensors")
            return list(zip(names, unflatten(buffer, torch_dtypes, shapes), strict=True))
        received = []
        for name, dtype, shape in zip(names, torch_dtypes, shapes, strict=True):
            tensor = torch.empty(shape, dtype=dtype, device=self.device)
            self._broadcast(entry, group_name, tensor, name)
            received.append((name, tensor))
        return received

    def _broadcast(self, entry: _Group, group_name: str, tensor: torch.Tensor, what: str) -> None:
        """Receive `tensor` from rank 0; `ValueError` (naming `what`) once the group is destroyed meanwhile."""
        options = dist.BroadcastOptions()
        options.rootRank = 0
        work = entry.group.broadcast([tensor], options)
        done = threading.Event()
        work.get_future().add_done_callback(lambda _f: done.set())
        while not done.wait(_DESTROY_POLL_S):
            if entry.destroyed.is_set():
                self._abandoned = [(g, w) for g, w in self._abandoned if not w.is_completed()]
                self._abandoned.append((entry, work))
                self._bucket_buffer = None
                raise ValueError(f"weight update group {group_name!r} was destroyed during the broadcast of {what}")
        work.wait()  # raises the collective's own error, if it failed

    def destroy(self, group_name: str) -> None:
        if group_name not in self._groups:
            raise ValueError(f"no weight update group named {group_name!r}")
        entry = self._groups.pop(group_name)
        entry.destroyed.set()
        leave_group(entry.group)  # a receive still waiting on it keeps the group alive (`_abandoned`)
