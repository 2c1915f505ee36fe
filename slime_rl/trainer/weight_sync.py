"""Publishing trainer weights to rollout engines over the SGLang weight-update protocol.

Global rank 0 gathers the model under HF names (`weights.gather_hf_state_dict`, collective over the
trainer group) and sends it to every engine, either
- `distributed`: through a weight-update process group (gloo on CPU, NCCL on GPU) built once per set of
  engines beside Megatron's groups: for each bucket of at most `weight_sync_bucket_mb`, rank 0 posts
  `/update_weights_from_distributed` to every engine and then broadcasts the bucket's tensors, either as one
  byte buffer (`load_format="flattened_bucket"`, SGLang's flattened bucket, engines/tensor_bucket.py: one
  collective per bucket) or one broadcast per tensor (`WeightPublisher._plan`). Tensors that lie back to back
  in rank 0's parameter buffer (trainer/param_buffer.py) go as flattened buckets straight from that memory;
  the copies the gather makes (q/k/v split from Megatron's fused rows, other ranks' shards) are packed or sent
  one by one as `trainer.weight_sync_format` says (`send_format`); or
- `disk`: an HF safetensors directory `v{version}` under `publish_dir(cfg)` (inside the run dir) and
  `/update_weights_from_disk`; once every engine has loaded it, older versions are deleted.
The new weight version goes with the last bucket, so an engine reports it only once it holds every
tensor; afterwards every engine's `/get_weight_version` is checked (read while its session closes).

The group (REFERENCE.md §1, engines/weight_group.py): rank 0 hosts the TCPStore on the trainer's own
address (trainer/rendezvous.py) and builds its end the way SGLang builds each engine rank's end. Ranks
per engine are the engine's own: SGLang joins one rank per tensor-parallel rank, so the publisher reads
each engine's `tp_size` from `/get_server_info` (1 when it reports none) when it builds the group, and
engine i gets `rank_offset = 1 + ranks of the engines before it`, the group
`world_size = 1 + ranks of all engines`. The trainer config is not consulted: an engine (or a restarted
one) is asked what it runs. SGLang numbers an engine's ranks by `tp_rank` alone, so its pipeline stages or
data-parallel replicas (pp_size, dp_size > 1) would repeat rank numbers: such engines cannot join. Each
group gets a fresh name: torch registers a group under its name, one at a time per process, and an engine
that missed a destroy must still be able to join the next group.

Sessions: SGLang 0.5.23 refuses `/update_weights_from_distributed` outside a session opened by
`/begin_weight_update` and closed by `/end_weight_update`; 0.5.15.post1 has neither endpoint. The first
publish to a group probes each engine with `begin` (HTTP 404: no sessions) and every publish wraps its
buckets in a session on the engines that have one.

Failing fast: each collective needs every engine, so rank 0 waits for it while watching the engines'
HTTP calls, which run on a helper thread with their own event loop. As soon as one fails, rank 0 stops
waiting and raises that engine's error; the group is dropped (engines are told to destroy their end,
which also ends rank 0's pending broadcast, and to close their session) and the next publish builds a
fresh one. Publishing to another set of engines (one went down, or a restarted one is synced alone) also
drops the group of the old set.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.distributed as dist

from slime_rl.config.trainer import TrainerConfig
from slime_rl.engines.client import EngineClient, EngineError
from slime_rl.engines.protocol import weight_update_ranks
from slime_rl.engines.tensor_bucket import FLATTENED_BUCKET, bytes_in_place, flatten, is_aligned, lies_after
from slime_rl.engines.weight_group import leave_group, new_group
from slime_rl.errors import ConfigError, ServiceError
from slime_rl.trainer import weights
from slime_rl.trainer.cpu_compat import has_cuda
from slime_rl.trainer.rendezvous import listen_socket, store_server

if TYPE_CHECKING:
    from slime_rl.trainer.trainer import MegatronTrainer

logger = logging.getLogger(__name__)

GROUP_NAME_PREFIX = "slime_rl_weights"  # each group is named `{prefix}_{random hex}`
_POLL_S = 0.05  # how often a waiting rank 0 looks at the engines' HTTP calls
_GRACE_S = 30.0  # after a collective failed, how long to wait for the engine's own (clearer) error
_CLEANUP_WAIT_S = 10.0  # how long a failed publish waits for engines to destroy their end and close sessions
_VERSION_DIR = re.compile(r"v\d+")
_PER_TENSOR_MIN_MEAN_BYTES = 1 << 20  # `send_format`: smaller tensors on average go flattened over gloo


class EngineLoop:
    """An event loop on a daemon thread with one client per engine kept across calls: a publish makes a few calls
    per bucket, and a new thread, loop and connection for each cost about 1.5 ms more than a kept one."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._clients: dict[tuple[str, int], EngineClient] = {}
        self._thread = threading.Thread(target=self.loop.run_forever, name="weight-publish-http", daemon=True)
        self._thread.start()
        atexit.register(self.close)  # a trainer process holds its publisher to the end: close the clients then

    def client(self, url: str, max_retries: int) -> EngineClient:
        """The kept client for `url` (call on the loop: clients belong to the loop they first ran in)."""
        key = (url, max_retries)
        if key not in self._clients:
            self._clients[key] = EngineClient(url, max_retries=max_retries)
        return self._clients[key]

    def close(self) -> None:
        """Close every client and stop the loop (once; later calls do nothing)."""
        atexit.unregister(self.close)
        if not self._thread.is_alive():
            return

        async def close_clients() -> None:
            await asyncio.gather(*(client.aclose() for client in self._clients.values()))

        asyncio.run_coroutine_threadsafe(close_clients(), self.loop).result(_CLEANUP_WAIT_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(_CLEANUP_WAIT_S)


class _EngineCalls:
    """One HTTP call per engine, run on `loop` (an `EngineLoop`), or else on a helper thread with its own loop.

    `error` is set as soon as any call fails and names that engine; `join` returns every result or raises.
    """

    def __init__(
        self,
        urls: list[str],
        call: Callable[[EngineClient, int], Awaitable[Any]],
        *,
        max_retries: int = 3,
        loop: EngineLoop | None = None,
    ) -> None:
        self.urls = urls
        self.results: list[Any] = []
        self.error: ServiceError | None = None

        async def call_one(client: EngineClient, index: int) -> Any:
            try:
                return await call(client, index)
            except Exception as err:
                message = str(err) if urls[index] in str(err) else f"engine {urls[index]}: {err}"
                if self.error is None:  # the first failure is the one to report
                    self.error = ServiceError(f"weight publish failed: {message}")
                    self.error.__cause__ = err
                raise

        async def call_all(clients: list[EngineClient]) -> list[Any]:
            # Every call runs to its end even when another failed: a failed publish's destroys must reach
            # the live engines although the dead one refused its own; `error` reports the first failure.
            return await asyncio.gather(*(call_one(c, i) for i, c in enumerate(clients)), return_exceptions=True)

        async def on_kept_clients() -> list[Any]:
            assert loop is not None
            return await call_all([loop.client(url, max_retries) for url in urls])

        async def on_new_clients() -> list[Any]:
            clients = [EngineClient(url, max_retries=max_retries) for url in urls]
            try:
                return await call_all(clients)
            finally:
                await asyncio.gather(*(c.aclose() for c in clients))

        if loop is not None:
            self.done: concurrent.futures.Future = asyncio.run_coroutine_threadsafe(on_kept_clients(), loop.loop)
        else:
            self.done = concurrent.futures.Future()
            threading.Thread(target=lambda: self._run(on_new_clients), daemon=True).start()

    def _run(self, main: Callable[[], Awaitable[list[Any]]]) -> None:
        try:
            self.done.set_result(asyncio.run(main()))
        except BaseException as err:  # handed to the caller's thread through `done`
            self.done.set_exception(err)

    def finished(self, timeout_s: float) -> bool:
        """Wait at most `timeout_s` for every call to end; whether they have."""
        return not concurrent.futures.wait([self.done], timeout=timeout_s).not_done

    def join(self, timeout_s: float | None = None) -> list[Any]:
        try:
            self.results = self.done.result(timeout_s)
        except concurrent.futures.TimeoutError:
            if self.error is None:
                raise ServiceError(f"engines did not answer within {timeout_s:.0f}s") from None
        except BaseException as err:
            if self.error is None:
                self.error = ServiceError(f"weight publish failed: {err!r}")
                self.error.__cause__ = err
        if self.error is not None:
            raise self.error
        return self.results


def _wait_beside(done: threading.Event, calls: _EngineCalls) -> None:
    """Block until `done` is set, but raise the engines' error as soon as one of their calls fails."""
    while not done.wait(_POLL_S):
        if calls.error is not None:
            raise calls.error


def _when_all_done(works: list[Any]) -> threading.Event:
    """An event set once every collective work has finished (successfully or not)."""
    done = threading.Event()
    torch.futures.collect_all([w.get_future() for w in works]).add_done_callback(lambda _f: done.set())
    return done


def _collective_failed(calls: _EngineCalls, err: BaseException) -> ServiceError:
    """The error to raise when rank 0's side of a collective failed: the engine's own, if it gives one."""
    deadline = time.monotonic() + _GRACE_S
    while calls.error is None and time.monotonic() < deadline:
        if calls.finished(_POLL_S):
            break
    if calls.error is not None:
        return calls.error
    failed = ServiceError(f"weight publish to {', '.join(calls.urls)} failed in the weight-update group: {err}")
    failed.__cause__ = err
    return failed


def _best_effort(urls: list[str], call: Callable[[EngineClient, int], Awaitable[Any]], what: str) -> None:
    """Make `call` on every engine once and wait at most `_CLEANUP_WAIT_S`; failures are logged, not raised.

    Without retries: an engine that refuses the connection is down, and holds no group or session any more.
    """
    try:
        _EngineCalls(urls, call, max_retries=0).join(_CLEANUP_WAIT_S)
    except ServiceError as err:
        logger.warning("could not %s on every engine: %s", what, err)


def send_format(configured: str, backend: str, mean_tensor_bytes: float) -> str:
    """`trainer.weight_sync_format` for tensors that would need packing (they do not lie back to back in one
    buffer), of `mean_tensor_bytes` on average, over `backend`. `auto` is flattened over NCCL, where packing is
    a device copy and a broadcast per tensor costs a kernel launch. Over gloo it is per
    tensor (no packing: a CPU copy of every byte) unless the tensors are small: each gloo broadcast costs about
    0.2 ms more than the bytes it moves (75 tensors of 101 MB: 40 ms against 26 ms for one buffer, 2 cores),
    while packing 1 MiB costs about 0.15 ms."""
    if configured != "auto":
        return configured
    if backend == "nccl" or mean_tensor_bytes < _PER_TENSOR_MIN_MEAN_BYTES:
        return FLATTENED_BUCKET
    return "per_tensor"


_IN_PLACE, _PACKED, _PER_TENSOR = "in_place", "packed", "per_tensor"  # how a bucket goes: `_Bucket.how`


@dataclass(eq=False)
class _Bucket:
    """One `/update_weights_from_distributed` call and its broadcasts."""

    tensors: list[tuple[str, torch.Tensor]]
    how: str  # in_place: flattened, sent from where the tensors lie | packed: flattened into a send buffer |
    # per_tensor: one broadcast per tensor

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in self.tensors)

    @property
    def num_broadcasts(self) -> int:
        return len(self.tensors) if self.how == _PER_TENSOR else 1


class Sent(NamedTuple):
    """What one publish sent: update calls (buckets), collectives (broadcasts) and the bytes rank 0 copied to
    pack buckets (0 when every tensor went from where it lies)."""

    buckets: int
    broadcasts: int
    packed_bytes: int = 0


@dataclass
class _Group:
    urls: list[str]  # the engines, in rank order
    name: str  # the group's name on every rank
    backend: str  # gloo | nccl
    store: Any  # dist.TCPStore; rank 0 hosts it
    group: Any  # dist.ProcessGroup
    pending: list[Any]  # collective works of a failed publish that may still be running
    sessions: list[bool] | None = None  # per engine: has /begin_weight_update; None until the first publish

    def session_urls(self) -> list[str]:
        """The engines that may hold a session: those that have sessions, or all until the first probe ended."""
        if self.sessions is None:
            return self.urls
        return [url for url, has_session in zip(self.urls, self.sessions, strict=True) if has_session]


class WeightPublisher:
    """Rank 0's side of the weight-update groups, one per set of engine URLs, kept across publishes."""

    def __init__(
        self, master_addr: str, bucket_bytes: int, timeout_s: float = 600.0, send_format: str = "auto"
    ) -> None:
        self.master_addr = master_addr
        self.bucket_bytes = bucket_bytes
        self.send_format = send_format  # TrainerConfig.weight_sync_format
        self.timeout = timedelta(seconds=timeout_s)
        self._groups: dict[tuple[str, ...], _Group] = {}
        # A gloo group released while a broadcast is pending blocks its releaser until the group's timeout,
        # so a dropped group is kept here until its works are done.
        self._retired: list[_Group] = []
        self._buffers: list[torch.Tensor] = []  # `_send_buffers`
        self.http = EngineLoop()  # the calls of every publish; group builds and clean-ups use new clients

    def close(self) -> None:
        """Stop the HTTP loop (the groups are left to the process's end)."""
        self.http.close()

    def _group(self, urls: list[str]) -> _Group:
        self._retired = [g for g in self._retired if not all(w.is_completed() for w in g.pending)]
        key = tuple(urls)
        if key not in self._groups:
            # The engines changed (one went down, or a restarted one is synced alone): an engine is in one group
            # at a time, and a group with a dead member can never broadcast again, so the old groups go first.
            for other in list(self._groups):
                self._drop(list(other), pending=[])
            self._groups[key] = self._build(urls)
        return self._groups[key]

    def _build(self, urls: list[str]) -> _Group:
        """A new group of rank 0 and every rank of every engine in `urls`; raises `ServiceError` naming the engine
        that failed (the engines are then told to destroy their end)."""
        ranks = [weight_update_ranks(info) for info in _EngineCalls(urls, lambda c, _i: c.get_server_info()).join()]
        offsets = list(accumulate(ranks[:-1], initial=1))  # engine i: 1 + the ranks of the engines before it
        world = 1 + sum(ranks)
        name = f"{GROUP_NAME_PREFIX}_{uuid.uuid4().hex[:12]}"
        listener = listen_socket(self.master_addr)
        port = listener.getsockname()[1]
        backend = "nccl" if has_cuda() else "gloo"
        # Engines connect once they get the request below.
        store = store_server(listener, world, self.timeout, wait_for_workers=False)
        joins = _EngineCalls(
            urls,
            lambda c, i: c.init_weights_update_group(
                master_address=self.master_addr,
                master_port=port,
                rank_offset=offsets[i],
                world_size=world,
                group_name=name,
                backend=backend,
            ),
        )
        built: dict[str, Any] = {}
        done = threading.Event()

        def build() -> None:  # blocks until every engine rank has joined (or the store times out)
            try:
                built["group"] = new_group(
                    store, rank=0, world_size=world, group_name=name, backend=backend, timeout=self.timeout
                )
            except Exception as err:
                built["error"] = err
            finally:
                done.set()

        # After a failed join the builder is left behind; it ends at the store's timeout.
        threading.Thread(target=build, daemon=True).start()
        try:
            _wait_beside(done, joins)
            if "error" in built:
                raise _collective_failed(joins, built["error"])
            joins.join()
        except ServiceError:
            self._destroy_on_engines(urls, name)
            raise
        logger.info("weight-update group %s: engines %s hold ranks from %s of %d", name, urls, offsets, world)
        return _Group(urls, name, backend, store, built["group"], pending=[])

    def _destroy_on_engines(self, urls: list[str], name: str) -> None:
        """Ask every engine to leave group `name` (best effort): that closes its connections to rank 0."""
        _best_effort(urls, lambda c, _i: c.destroy_weights_update_group(name), "destroy the weight-update group")

    def _drop(self, urls: list[str], pending: list[Any]) -> None:
        """Forget the group of `urls` after a failed publish; the next publish builds a new one."""
        dropped = self._groups.pop(tuple(urls))
        dropped.pending = pending
        self._retired.append(dropped)
        self._destroy_on_engines(urls, dropped.name)  # gloo: the engines closing their end fails our broadcast
        leave_group(dropped.group, abort=dropped.backend == "nccl")  # NCCL does not notice; aborting ends it

    def _begin_sessions(self, group: _Group) -> None:
        """Open a session on every engine that has sessions; the group's first publish finds out which do."""

        async def begin(client: EngineClient, index: int) -> bool:
            if group.sessions is not None and not group.sessions[index]:
                return False
            try:
                await client.begin_weight_update()
            except EngineError as err:
                if err.status_code == 404:  # SGLang before 0.5.23, or a server without sessions
                    return False
                raise
            return True

        group.sessions = _EngineCalls(group.urls, begin, loop=self.http).join()

    def _cut(self, tensors: list[tuple[str, torch.Tensor]], *, in_place: bool) -> list[list[tuple[str, torch.Tensor]]]:
        """`tensors` in order, cut into buckets of at most `bucket_bytes` (a bigger tensor alone), before a tensor
        whose byte offset in its bucket would not be a multiple of its dtype's size (SGLang's check) and, with
        `in_place`, before a tensor that does not lie right after the one before it."""
        buckets: list[list[tuple[str, torch.Tensor]]] = [[]]
        size = 0
        for name, tensor in tensors:
            nbytes = tensor.numel() * tensor.element_size()
            if buckets[-1] and (
                size + nbytes > self.bucket_bytes
                or not is_aligned(size, tensor.dtype)
                or (in_place and not lies_after(buckets[-1][-1][1], tensor))
            ):
                buckets.append([])
                size = 0
            buckets[-1].append((name, tensor))
            size += nbytes
        return [bucket for bucket in buckets if bucket]

    def _plan(self, tensors: dict[str, torch.Tensor], backend: str, device: torch.device) -> list[_Bucket]:
        """How to send `tensors`: tensors that lie back to back in one storage on `device` (the trainer keeps its
        parameters in one buffer, trainer/param_buffer.py) go as flattened buckets sent from where they lie; the
        others (copies the gather made) are packed into flattened buckets or sent one broadcast per tensor, as
        `send_format` says. `weight_sync_format=per_tensor` sends every tensor alone. Buckets are the same from
        one publish to the next, so an engine keeps receiving each one into the same memory."""
        items = list(tensors.items())
        if self.send_format == "per_tensor":
            return [_Bucket(b, _PER_TENSOR) for b in self._cut(items, in_place=False)]
        on_device = [(name, t) for name, t in items if t.device == device]
        by_address = sorted(on_device, key=lambda item: item[1].data_ptr())
        runs = [b for b in self._cut(by_address, in_place=True) if len(b) > 1]
        in_place = {name for run in runs for name, _ in run}
        loose = [(name, t) for name, t in items if name not in in_place]
        mean_bytes = sum(t.numel() * t.element_size() for _, t in loose) / max(len(loose), 1)
        how = _PACKED if send_format(self.send_format, backend, mean_bytes) == FLATTENED_BUCKET else _PER_TENSOR
        return [_Bucket(run, _IN_PLACE) for run in runs] + [_Bucket(b, how) for b in self._cut(loose, in_place=False)]

    def _send_buffers(self, device: torch.device, num_bytes: int) -> list[torch.Tensor]:
        """Two uint8 buffers of at least `num_bytes` on `device`, kept across publishes: a bucket is packed into
        one while the other is on the wire, and reusing them saves allocating (and page-faulting) each time."""
        buffers = self._buffers
        if len(buffers) != 2 or buffers[0].device != device or buffers[0].numel() < num_bytes:
            self._buffers = [torch.empty(num_bytes, dtype=torch.uint8, device=device) for _ in range(2)]
        return self._buffers

    def broadcast(self, urls: list[str], tensors: dict[str, torch.Tensor], version: int) -> Sent:
        """Send `tensors` to every engine through the weight-update group; returns how many buckets and broadcasts.

        Raises `ServiceError` naming the engine as soon as one engine's call fails; the group is dropped and
        the engines' sessions are closed.
        """
        group = self._group(urls)
        device = torch.device("cuda", torch.cuda.current_device()) if has_cuda() else torch.device("cpu")
        options = dist.BroadcastOptions()
        options.rootRank = 0
        buckets = self._plan(tensors, group.backend, device)
        packed = [b for b in buckets if b.how == _PACKED]
        buffers = self._send_buffers(device, max(b.num_bytes for b in packed)) if packed else []

        def payload(index: int) -> list[torch.Tensor]:
            """What bucket `index` broadcasts; a packed bucket is packed here, alternating the two buffers."""
            bucket = buckets[index]
            local = [t.to(device) for _, t in bucket.tensors]
            if bucket.how == _IN_PLACE:
                return [bytes_in_place(local)]
            if bucket.how == _PACKED:
                return [flatten(local, out=buffers[packed.index(bucket) % 2])]
            return [t.contiguous() for t in local]

        works: list[Any] = []
        try:
            self._begin_sessions(group)
            next_sent = payload(0) if buckets else []
            for index, bucket in enumerate(buckets):
                is_last = index == len(buckets) - 1
                posts = _EngineCalls(  # engines enter the broadcast when they get this
                    urls,
                    lambda c, _i, bucket=bucket, is_last=is_last: c.update_weights_from_distributed(
                        names=[n for n, _ in bucket.tensors],
                        dtypes=[str(t.dtype).removeprefix("torch.") for _, t in bucket.tensors],
                        shapes=[list(t.shape) for _, t in bucket.tensors],
                        group_name=group.name,
                        weight_version=str(version) if is_last else None,
                        load_format=None if bucket.how == _PER_TENSOR else FLATTENED_BUCKET,
                    ),
                    loop=self.http,
                )
                works = []
                try:
                    works = [group.group.broadcast([t], options) for t in next_sent]
                    if not is_last:  # the next bucket is made ready while this one travels
                        next_sent = payload(index + 1)
                    _wait_beside(_when_all_done(works), posts)
                    for work in works:
                        work.wait()
                except RuntimeError as err:  # our side of the group failed (an engine left, a timeout)
                    raise _collective_failed(posts, err) from err
                posts.join()
            sessions = group.sessions or [False] * len(urls)
            versions = _EngineCalls(urls, lambda c, i: _close_and_read_version(c, sessions[i]), loop=self.http).join()
        except ServiceError:
            self._drop(urls, works)
            _best_effort(group.session_urls(), lambda c, _i: c.end_weight_update(), "close the weight-update session")
            raise
        _check_versions(versions, version)
        return Sent(len(buckets), sum(b.num_broadcasts for b in buckets), sum(b.num_bytes for b in packed))


async def _close_and_read_version(client: EngineClient, has_session: bool) -> str:
    """Close the engine's weight-update session, if it has one, while reading its weight version."""
    closing = [client.end_weight_update()] if has_session else []
    version, *_ = await asyncio.gather(client.get_weight_version(), *closing)
    return version


def _check_versions(versions: list[str], version: int) -> None:
    if any(v != str(version) for v in versions):
        raise ServiceError(f"engines report weight versions {versions} after publishing version {version}")


def publish_dir(cfg: TrainerConfig) -> Path:
    """Where `weight_sync=disk` writes: `trainer.weight_publish_dir`, else `{checkpoint_dir}/publish`."""
    if cfg.weight_publish_dir:
        return Path(cfg.weight_publish_dir)
    if cfg.checkpoint_dir:
        return Path(cfg.checkpoint_dir) / "publish"
    raise ConfigError(
        "trainer.weight_sync=disk needs trainer.weight_publish_dir or trainer.checkpoint_dir (the trainer "
        "configs set it to {run dir}/checkpoints); set one of them"
    )


def publish_to_disk(
    tensors: dict[str, torch.Tensor], root: Path, urls: list[str], version: int, *, side_files_from: str | Path
) -> Path:
    """Write `tensors` to `root/v{version}`, have every engine load it and check the version each reports, then
    delete older `v*` directories.

    Only directories named `v<number>` are ever deleted. If an engine fails to load, nothing is deleted.
    """
    path = weights.write_hf_dir(tensors, root / f"v{version}", side_files_from=side_files_from)
    _EngineCalls(urls, lambda c, _i: c.update_weights_from_disk(str(path), weight_version=str(version))).join()
    _check_versions(_EngineCalls(urls, lambda c, _i: c.get_weight_version()).join(), version)
    for old in root.iterdir():
        if old != path and old.is_dir() and _VERSION_DIR.fullmatch(old.name):
            shutil.rmtree(old)
    return path


def publish(trainer: MegatronTrainer, engine_urls: list[str], version: int) -> dict[str, float]:
    """Gather the weights and send them to `engine_urls` as `version` (collective over the trainer group).

    Returns `weights/...` metrics on global rank 0 and an empty dict on the other ranks.
    """
    start = time.perf_counter()
    hf = weights.gather_hf_state_dict(trainer.model, trainer.arch, trainer.layout, split_into=trainer.publish_split)
    if hf is None:
        return {}
    gathered = time.perf_counter()
    cfg = trainer.cfg
    num_bytes = sum(t.numel() * t.element_size() for t in hf.values())
    if cfg.weight_sync == "disk":
        publish_to_disk(hf, publish_dir(cfg), engine_urls, version, side_files_from=trainer.model_cfg.path)
        sent = Sent(buckets=1, broadcasts=0)
    else:
        if trainer.publisher is None:
            trainer.publisher = WeightPublisher(
                trainer.master_addr, cfg.weight_sync_bucket_mb << 20, send_format=cfg.weight_sync_format
            )
        sent = trainer.publisher.broadcast(engine_urls, hf, version)
    done = time.perf_counter()
    logger.info(
        "published version %d (%d bytes) to %d engines in %.3fs", version, num_bytes, len(engine_urls), done - start
    )
    return {
        "weights/publish_time_s": done - start,
        "weights/gather_time_s": gathered - start,
        "weights/send_time_s": done - gathered,
        "weights/bytes": float(num_bytes),
        "weights/num_buckets": float(sent.buckets),
        "weights/num_broadcasts": float(sent.broadcasts),
        "weights/packed_bytes": float(sent.packed_bytes),
        "weights/version": float(version),
    }
