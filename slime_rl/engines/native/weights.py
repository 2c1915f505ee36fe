"""Weight sources for the native engine: safetensors directories and torch.distributed update groups.

Owns reading HF-named tensors; loading them into the model is the runner's job. A weight-update group
follows SGLang (REFERENCE.md §1): the trainer is rank 0 and hosts the TCPStore; this engine, one rank
(TP=1), joins as rank `rank_offset` and builds its end exactly as SGLang's engine ranks do
(engines/weight_group.py), with gloo on CPU or NCCL on CUDA, and receives each tensor by broadcast from
rank 0 in the order of `names`, or a whole bucket in one broadcast (`load_format="flattened_bucket"`), into
the tensors the runner names (often its parameters: runner.py).

Destroying a group ends a receive that waits on it: when rank 0 gives up on a publish (another engine of
the group died before the broadcast), it destroys the group on the engines, and this engine's model thread
must not stay blocked in a broadcast that will never come. The pending gloo op itself lasts until the
group's timeout, and releasing a gloo group joins its worker thread, so the abandoned group is kept
(`_abandoned`) until its ops have ended: otherwise whichever thread dropped the last reference would block.
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

from slime_rl.engines.weight_group import connect_store, leave_group, new_group

logger = logging.getLogger(__name__)

BACKENDS = ("gloo", "nccl")
_DESTROY_POLL_S = 0.05  # how often a waiting receive checks whether its group was destroyed


class ReceiveAbandoned(ValueError):
    """The weight-update group was destroyed while a receive waited on it; its pending op may still write."""


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
        self._abandoned: list[tuple[_Group, list[Any]]] = []  # destroyed groups and their still pending works

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

    def receive(self, group_name: str, targets: list[torch.Tensor], what: str) -> None:
        """Receive from rank 0 into each of `targets` in order, one broadcast each: a flattened bucket is one
        uint8 target (engines/tensor_bucket.py), a per-tensor update one target per name. Blocks until all have
        arrived, or raises `ReceiveAbandoned` (naming `what`) once the group is destroyed meanwhile: the pending
        receives may then still write to `targets`, so they must not be read or reused."""
        entry = self._entry(group_name)
        options = dist.BroadcastOptions()
        options.rootRank = 0
        # All posted at once: the group runs them in order, each receiving while the next is set up.
        works = [entry.group.broadcast([target], options) for target in targets]
        done = threading.Event()
        torch.futures.collect_all([work.get_future() for work in works]).add_done_callback(lambda _f: done.set())
        while not done.wait(_DESTROY_POLL_S):
            if entry.destroyed.is_set():
                self._abandoned = [(g, w) for g, w in self._abandoned if not all(x.is_completed() for x in w)]
                self._abandoned.append((entry, works))
                raise ReceiveAbandoned(
                    f"weight update group {group_name!r} was destroyed during the broadcast of {what}"
                )
        for work in works:
            work.wait()  # raises the collective's own error, if one failed

    def _entry(self, group_name: str) -> _Group:
        if group_name not in self._groups:
            raise ValueError(f"no weight update group named {group_name!r}; call init_weights_update_group first")
        return self._groups[group_name]

    def destroy(self, group_name: str) -> None:
        if group_name not in self._groups:
            raise ValueError(f"no weight update group named {group_name!r}")
        entry = self._groups.pop(group_name)
        entry.destroyed.set()
        leave_group(entry.group)  # a receive still waiting on it keeps the group alive (`_abandoned`)
