"""Engine ranks of a weight-update group, each in a process of its own, as SGLang runs its TP ranks.

`EngineRanks` starts one spawned process per rank and runs a call on all of them at once: join a group,
receive one bucket of broadcasts, destroy the group. A rank builds its end either with the native engine's
`WeightUpdateGroups` ("native", `NativeRank`) or with `SGLangRank` ("sglang"), which follows SGLang's own steps one by
one (written for these tests after `init_custom_process_group` in python/sglang/srt/utils/common.py and
`receive_weights_from_distributed` in its model runner, SGLang 0.5.15.post1 and 0.5.23), so that a
trainer whose store keys differ from SGLang's never meets it. A process holds one rank because torch
registers a group under its name, once per process. Received tensors come back as `TensorRecord`s.
"""

from __future__ import annotations

import multiprocessing as mp
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import Backend, PrefixStore, _new_process_group_helper, _world, rendezvous

TIMEOUT_S = 30.0  # a rank that cannot meet rank 0 fails after this
TensorRecord = tuple[str, list[int], bytes]  # dtype name, shape, raw bytes: equal records = bit-exact tensors


def tensor_record(tensor: torch.Tensor) -> TensorRecord:
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return str(tensor.dtype).removeprefix("torch."), list(tensor.shape), raw


class SGLangRank:
    """One SGLang engine rank's weight-update groups, built step by step as SGLang builds them."""

    def __init__(self, timeout_s: float) -> None:
        # An SGLang rank has its own default group (its TP group) beside the weight-update group; so has this.
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        self.timeout = timedelta(seconds=timeout_s)
        self.groups: dict[str, dist.ProcessGroup] = {}

    def init_group(
        self, *, master_address: str, master_port: int, rank: int, world_size: int, group_name: str, backend: str
    ) -> None:
        iterator = rendezvous(f"tcp://{master_address}:{master_port}", rank, world_size, timeout=self.timeout)
        store, rank, world_size = next(iterator)
        store.set_timeout(self.timeout)
        store = PrefixStore(group_name, store)
        group, _ = _new_process_group_helper(
            world_size,
            rank,
            [],
            Backend(backend),
            store,
            group_name=group_name,
            backend_options=None,
            timeout=self.timeout,
        )
        _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
        self.groups[group_name] = group

    def receive(
        self,
        group_name: str,
        names: list[str],
        dtypes: list[str],
        shapes: list[list[int]],
        load_format: str | None = None,
    ) -> list[tuple[str, torch.Tensor]]:
        weights = [
            (name, torch.empty(shape, dtype=getattr(torch, dtype)))
            for name, dtype, shape in zip(names, dtypes, shapes, strict=True)
        ]
        if load_format == "flattened_bucket":  # SGLang's FlattenedTensorBucket: one uint8 buffer, bytes in order
            sizes = [w.numel() * w.element_size() for _, w in weights]
            buffer = torch.empty(sum(sizes), dtype=torch.uint8)
            dist.broadcast(buffer, src=0, group=self.groups[group_name])
            chunks = torch.split(buffer, sizes)
            return [(name, c.view(w.dtype).reshape(w.shape)) for (name, w), c in zip(weights, chunks, strict=True)]
        handles = [dist.broadcast(w, src=0, group=self.groups[group_name], async_op=True) for _, w in weights]
        for handle in handles:
            handle.wait()
        return weights

    def destroy(self, group_name: str) -> None:
        if group_name not in self.groups:
            raise ValueError(f"no weight update group named {group_name!r}")
        dist.destroy_process_group(self.groups.pop(group_name))


class NativeRank:
    """The native engine's `WeightUpdateGroups`, receiving into new tensors (the engine's runner names its own)."""

    def __init__(self, timeout_s: float) -> None:
        from slime_rl.engines.native.weights import WeightUpdateGroups

        self.groups = WeightUpdateGroups(torch.device("cpu"), timeout_s)
        self.init_group = self.groups.init_group
        self.destroy = self.groups.destroy

    def receive(
        self,
        group_name: str,
        names: list[str],
        dtypes: list[str],
        shapes: list[list[int]],
        load_format: str | None = None,
    ) -> list[tuple[str, torch.Tensor]]:
        from slime_rl.engines.native.weights import parse_dtype
        from slime_rl.engines.tensor_bucket import FLATTENED_BUCKET, byte_ranges, unflatten

        torch_dtypes = [parse_dtype(dtype) for dtype in dtypes]
        if load_format == FLATTENED_BUCKET:
            ranges = byte_ranges(torch_dtypes, shapes)
            buffer = torch.empty(ranges[-1][1] if ranges else 0, dtype=torch.uint8)
            self.groups.receive(group_name, [buffer], "a flattened bucket")
            return list(zip(names, unflatten(buffer, torch_dtypes, shapes), strict=True))
        targets = [torch.empty(shape, dtype=dtype) for dtype, shape in zip(torch_dtypes, shapes, strict=True)]
        self.groups.receive(group_name, targets, f"{len(names)} tensors")
        return list(zip(names, targets, strict=True))


def _serve_rank(conn: Connection, recipe: str) -> None:
    """Run the calls the parent sends until it closes its end; answer each with (ok, result or error)."""
    torch.set_num_threads(1)
    rank: Any = NativeRank(TIMEOUT_S) if recipe == "native" else SGLangRank(TIMEOUT_S)
    while True:
        try:
            method, kwargs = conn.recv()
        except EOFError:
            return
        try:
            result = getattr(rank, method)(**kwargs)
        except Exception as err:
            conn.send((False, f"{type(err).__name__}: {err}"))
            continue
        if method == "receive":
            result = [(name, tensor_record(tensor)) for name, tensor in result]
        conn.send((True, result))


class EngineRanks:
    """`num_ranks` rank processes of one engine, built with `recipe` ("native" or "sglang")."""

    def __init__(self, num_ranks: int, recipe: str) -> None:
        context = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.processes: list[Any] = []
        for _ in range(num_ranks):
            parent, child = context.Pipe()
            process = context.Process(target=_serve_rank, args=(child, recipe), daemon=True)
            process.start()
            child.close()
            self.conns.append(parent)
            self.processes.append(process)

    def call(self, method: str, per_rank: list[dict[str, Any]]) -> list[Any]:
        """Run `method(**per_rank[i])` on rank i, all at once; every rank's result, or RuntimeError with the errors."""
        for conn, kwargs in zip(self.conns, per_rank, strict=True):
            conn.send((method, kwargs))
        answers = [conn.recv() for conn in self.conns]
        errors = [str(result) for ok, result in answers if not ok]
        if errors:
            raise RuntimeError("; ".join(errors))
        return [result for _, result in answers]

    def close(self) -> None:
        """Kill the ranks: none holds anything a test still needs, and a rank may be inside a collective."""
        for process in self.processes:
            process.kill()
            process.join()
        for conn in self.conns:
            conn.close()
