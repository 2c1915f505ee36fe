"""`RedisBuffer`: the central buffer between rollout workers and the trainer (DESIGN.md §2).

Owns the Redis keys of one run, the moves of groups between them and the counters that account for
every group. It does not own the wire format (`codec`), the prompt dataset and its cursor (`dataset`),
how a batch is split across ranks (`batching`), the lease scripts and heartbeat (`leases`) or the client's
reconnect policy (`connection`).

Keys, all under `slime:{run_id}:`:
    prompts   list of encoded prompt groups, refilled from the dataset, popped from the left
    partials  list of recycled (APRIL) groups, taken before fresh prompts
    samples   stream of finished groups, fields `version` (weight version at publish) and `summary`
              (a `GroupSummary`: what the driver plans a step with)
    payloads  hash of the finished groups' payloads by stream entry id; trainer ranks fetch their share
              from here (`fetch_groups`), so the groups' tokens never pass through the driver
    version   the last published weight version (absent = 0)
    counters  hash of the counters below, all counted in groups
    dataset   hash of the prompt dataset cursor (owned by `slime_rl.buffer.dataset`)
    owners, lease:{owner}, taken:{owner}
              leases on taken groups (see `slime_rl.buffer.leases`): each group in flight is held in its
              taker's `taken` hash until it is published, recycled, dropped or reclaimed

Counters (cumulative, in groups):
    issued          fresh prompt groups handed to rollout by `take_groups` (recycled partials are not
                    issued again)
    recycled        `put_partials` calls' groups; one group recycled three times counts three
    reclaimed       in-flight groups of a taker whose lease expired (it died), put back in `partials` as
                    they were taken
    completed       groups published to the stream
    dropped_<why>   groups dropped: `dropped_filter` (and any other reason) by `record_drops` on the
                    rollout side, `dropped_stale` by the staleness filter on read
    trained         groups acknowledged after an optimizer step committed
    in_flight       (a gauge) groups taken by rollout and not yet published, recycled, dropped or reclaimed

Invariant, kept by making every move and its counter update one MULTI/EXEC or Lua call:
    issued = trained + sum(dropped_*) + in_flight + buffered,  buffered = len(partials) + len(samples)
where `samples` holds published groups not yet acknowledged (delivered or not): acknowledging a group
deletes its stream entry, so nothing is trained twice and the stream does not grow without bound.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields

import msgpack
import redis

from slime_rl.buffer import leases
from slime_rl.buffer.codec import decode_group, decode_summary, encode_group, encode_summary
from slime_rl.buffer.connection import DEFAULT_RECONNECT_TIMEOUT_S, connect
from slime_rl.buffer.staleness import is_fresh
from slime_rl.errors import DataError
from slime_rl.types import Group, GroupSummary

logger = logging.getLogger(__name__)

CONSUMER_GROUP = "trainer"
COUNTERS = ("issued", "completed", "recycled", "reclaimed", "dropped_filter", "dropped_stale", "trained")
DEFAULT_REDELIVERY_IDLE_MS = 600_000
_REASON = re.compile(r"[a-z][a-z0-9_]*")

# KEYS: samples, counters, payloads. ARGV: consumer group, counter field, entry ids...
# Acknowledges and deletes each entry and its payload; counts only entries this call acknowledged, so a second ack of
# the same entry (e.g. by a consumer whose entries were re-delivered elsewhere) changes nothing.
_SETTLE = """
local n = 0
for i = 3, #ARGV do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    redis.call('XDEL', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[3], ARGV[i])
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[2], ARGV[2], n) end
return n
"""


@dataclass(frozen=True, slots=True)
class BufferKeys:
    """The Redis keys of one run."""

    prompts: str
    partials: str
    samples: str
    payloads: str
    version: str
    counters: str
    dataset: str

    @classmethod
    def for_run(cls, run_id: str) -> BufferKeys:
        prefix = f"slime:{run_id}:"
        return cls(**{f.name: prefix + f.name for f in fields(cls)})


@dataclass(slots=True, kw_only=True)
class Batch:
    """Groups read by one trainer consumer, as summaries; their payloads stay in Redis (`fetch_groups`).
    Pass it to `RedisBuffer.ack` once the optimizer step commits."""

    summaries: list[GroupSummary]
    entry_ids: list[str]  # stream entry of each group, same order
    versions: list[int]  # weight version each group was published under, same order
    num_dropped_stale: int = 0  # groups this read dropped as stale (already counted and acknowledged)
    bytes_read: int = 0  # bytes of the stream entries this read received (summaries, not payloads)

    def extend(self, other: Batch) -> None:
        """Append the groups of a later read by the same consumer."""
        self.summaries += other.summaries
        self.entry_ids += other.entry_ids
        self.versions += other.versions
        self.num_dropped_stale += other.num_dropped_stale
        self.bytes_read += other.bytes_read


class RedisBuffer:
    """Synchronous buffer API used by rollout (take, recycle, publish, drop) and trainer (read, ack).

    Args:
        client: a redis-py client with `decode_responses=False`.
        run_id: namespace of every key.
        max_staleness: `read_batch` drops groups whose oldest token lags the trainer by more versions;
            None keeps every group.
        redelivery_idle_ms: a group another consumer read but did not acknowledge for this long is
            re-delivered (that consumer is presumed dead). Make it longer than the slowest optimizer step.
        owner: lease owner of the groups this instance takes; unique per instance (default: a fresh uuid).
        lease_s: seconds a taker's lease lasts without renewal (a take or a `start_heartbeat` beat renews it);
            after that its groups are reclaimed.
    """

    def __init__(
        self,
        client: redis.Redis,
        run_id: str,
        max_staleness: int | None = None,
        *,
        redelivery_idle_ms: int = DEFAULT_REDELIVERY_IDLE_MS,
        owner: str | None = None,
        lease_s: float = leases.DEFAULT_LEASE_S,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.keys = BufferKeys.for_run(run_id)
        self.max_staleness = max_staleness
        self.redelivery_idle_ms = redelivery_idle_ms
        self.owner = owner or uuid.uuid4().hex
        self.lease_s = lease_s
        self._prefix = f"slime:{run_id}:"
        self._lease_keys = [f"{self._prefix}owners", f"{self._prefix}lease:{self.owner}"]
        self._taken_key = self._taken_of(self.owner)
        self._take = client.register_script(leases.TAKE)
        self._release = client.register_script(leases.RELEASE)
        self._reclaim = client.register_script(leases.RECLAIM)
        self._forget = client.register_script(leases.FORGET)
        self._settle = client.register_script(_SETTLE)
        self._heartbeat: leases.Heartbeat | None = None
        self._held: dict[str, str] = {}  # group id -> lease field of the groups this instance took and holds
        self._has_consumer_group = False
        self._outstanding: set[str] = set()  # entries this instance handed out in a Batch, not yet acked
        self._recovered: set[str] = set()  # consumers whose entries left by an earlier process were re-read

    @classmethod
    def from_url(
        cls,
        url: str,
        run_id: str,
        max_staleness: int | None = None,
        *,
        redelivery_idle_ms: int = DEFAULT_REDELIVERY_IDLE_MS,
        owner: str | None = None,
        lease_s: float = leases.DEFAULT_LEASE_S,
        reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S,
    ) -> RedisBuffer:
        """A buffer on its own client, whose commands retry through `reconnect_timeout_s` of server downtime."""
        return cls(
            connect(url, reconnect_timeout_s),
            run_id,
            max_staleness,
            redelivery_idle_ms=redelivery_idle_ms,
            owner=owner,
            lease_s=lease_s,
        )

    # -- rollout side -------------------------------------------------------------------------------

    def put_prompts(self, groups: Sequence[Group]) -> None:
        """Append prompt groups to `prompts`. Not counted: a prompt group counts once it is issued."""
        if groups:
            self.client.rpush(self.keys.prompts, *[encode_group(g) for g in groups])

    def take_groups(self, n: int) -> list[Group]:
        """Take at most `n` groups: recycled partials first (oldest first), then fresh prompts.

        First reclaims the groups of takers whose lease expired (into `partials`, so they come back first).
        Fresh groups count as issued and have `created_version` set to the published weight version.
        Every returned group counts as in flight, leased to this instance's owner, until it is published,
        recycled or dropped; a reclaimed fresh group comes back as its prompt was, without that stamp.
        """
        if n <= 0:
            return []
        keys = [self.keys.partials, self.keys.prompts, self.keys.counters, self.keys.version]
        num_reclaimed, num_partial, version, *payloads = self._take(
            keys=keys + self._lease_keys + [self._taken_key],
            args=[n, self.owner, int(self.lease_s * 1000), self._prefix],
        )
        if num_reclaimed:
            logger.warning("reclaimed %d groups of rollout workers whose lease expired", num_reclaimed)
        groups = [decode_group(p) for p in payloads]
        for group, payload in zip(groups, payloads, strict=True):
            self._held[group.group_id] = leases.lease_field(payload)
        for group in groups[num_partial:]:
            for sample in group.samples:
                sample.created_version = int(version)
        return groups

    def put_partials(self, groups: Sequence[Group]) -> None:
        """Return in-flight groups with unfinished samples, to be taken first next time. Counts recycled."""
        self._release_groups("recycle", "recycled", groups, self.keys.partials)

    def publish(self, groups: Sequence[Group], version: int) -> None:
        """Append finished in-flight groups to the `samples` stream, tagged with `version`. Counts completed.

        Raises ValueError if a group still has unfinished samples (those go to `put_partials`).
        """
        for group in groups:
            if not group.is_finished:
                raise ValueError(f"group {group.group_id} has unfinished samples; recycle it with put_partials")
        self._release_groups("publish", "completed", groups, self.keys.samples, version=version)

    def record_drops(self, reason: str, groups: Sequence[Group]) -> None:
        """Discard in-flight `groups` the rollout side will not publish, counted under `dropped_<reason>`."""
        if not _REASON.fullmatch(reason) or reason == "stale":
            raise ValueError(
                f"drop reason {reason!r} must be a lowercase identifier such as 'filter'; 'stale' is counted by "
                "read_batch"
            )
        self._release_groups("drop", f"dropped_{reason}", groups, self.keys.counters)

    def reclaim_expired(self) -> int:
        """Put the groups of every taker whose lease expired back in `partials`, counted reclaimed; returns how many.

        `take_groups` does this first anyway; call it to bring them back without taking.
        """
        return int(
            self._reclaim(keys=[self._lease_keys[0], self.keys.partials, self.keys.counters], args=[self._prefix])
        )

    def start_heartbeat(self) -> None:
        """Renew this owner's lease from a daemon thread every `lease_s / 3` until `close()` (or process death)."""
        if self._heartbeat is None:
            self._heartbeat = leases.Heartbeat(self.client, self._lease_keys[1], self.lease_s)
            self._heartbeat.start()

    # -- trainer side -------------------------------------------------------------------------------

    def read_batch(self, consumer: str, num_groups: int, block_ms: int, trainer_version: int) -> Batch:
        """Read up to `num_groups` fresh groups as trainer consumer `consumer`: their summaries, entry ids and
        versions; the payloads stay in Redis for `fetch_groups`.

        Sources, in order: this consumer's own unacknowledged entries from an earlier process (a restart
        under the same name), entries of other consumers idle for `redelivery_idle_ms` (XAUTOCLAIM), then
        new entries. Stale groups (see `is_fresh`) are acknowledged, deleted and counted as dropped_stale;
        they do not count toward `num_groups`. Waits up to `block_ms` in total for the batch to fill
        (0 = do not wait) and returns what it has then, possibly fewer groups.
        """
        self._ensure_consumer_group()
        deadline = time.monotonic() + block_ms / 1000
        batch = Batch(summaries=[], entry_ids=[], versions=[])
        while len(batch.summaries) < num_groups:
            need = num_groups - len(batch.summaries)
            entries = self._own_pending(consumer, need)
            if len(entries) < need:
                entries += self._claim_idle(consumer, need - len(entries))
            if len(entries) < need:
                wait_ms = int((deadline - time.monotonic()) * 1000)
                entries += self._read_new(consumer, need - len(entries), wait_ms)
            self._admit(entries, trainer_version, batch)
            if not entries and time.monotonic() >= deadline:
                break
        self._outstanding.update(batch.entry_ids)
        return batch

    def fetch_payloads(self, entry_ids: Sequence[str]) -> list[bytes]:
        """The encoded groups (`codec.decode_group` reads them) of stream entries `entry_ids`, read and not yet
        acknowledged."""
        if not entry_ids:
            return []
        payloads = self.client.hmget(self.keys.payloads, list(entry_ids))
        missing = [e for e, p in zip(entry_ids, payloads, strict=True) if p is None]
        if missing:
            raise DataError(
                f"{self.keys.payloads} has no payload for stream entries {missing[:3]} ({len(missing)} in all): "
                "they were acknowledged already, or the buffer was restored from another run"
            )
        return payloads

    def fetch_groups(self, entry_ids: Sequence[str]) -> list[Group]:
        """The groups of stream entries `entry_ids`, decoded (see `fetch_payloads`)."""
        return [decode_group(p) for p in self.fetch_payloads(entry_ids)]

    def ack(self, batch: Batch) -> int:
        """Acknowledge a batch after its optimizer step committed: its entries are deleted and counted trained.

        Returns how many entries this call acknowledged (entries acknowledged before are not counted again).
        """
        self._outstanding.difference_update(batch.entry_ids)
        return self._settle_entries(batch.entry_ids, "trained")

    def set_version(self, version: int) -> None:
        """Publish the weight version the rollout engines now serve."""
        self.client.set(self.keys.version, version)

    def get_version(self) -> int:
        """The last published weight version; 0 before the first `set_version`."""
        value = self.client.get(self.keys.version)
        return int(value) if value is not None else 0

    # -- accounting ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, int]:
        """Counters, `in_flight`, queue lengths, `unaccounted` (0 when the invariant holds) and the
        dataset cursor (`dataset_*`), read in one MULTI/EXEC so they are mutually consistent."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.keys.counters)
        pipe.llen(self.keys.prompts)
        pipe.llen(self.keys.partials)
        pipe.xlen(self.keys.samples)
        pipe.xpending(self.keys.samples, CONSUMER_GROUP)
        pipe.hgetall(self.keys.dataset)
        raw, prompts, partials, samples, pending, dataset = pipe.execute(raise_on_error=False)
        if isinstance(pending, redis.ResponseError):
            if "NOGROUP" not in str(pending):
                raise pending
            pending = {"pending": 0}  # no trainer has read yet
        stats = {name: 0 for name in COUNTERS}
        stats |= {key.decode(): int(value) for key, value in raw.items()}
        stats.setdefault("in_flight", 0)
        stats |= {"prompts": prompts, "partials": partials, "samples": samples, "pending": pending["pending"]}
        dropped = sum(value for key, value in stats.items() if key.startswith("dropped_"))
        stats["unaccounted"] = stats["issued"] - (
            stats["trained"] + dropped + stats["in_flight"] + stats["partials"] + stats["samples"]
        )
        for key, value in dataset.items():
            stats[f"dataset_{key.decode()}"] = int(value)
        return stats

    def counters(self) -> dict[str, int]:
        """The cumulative counters (see the module docstring): the six standard ones plus any dropped_<reason>."""
        stats = self.snapshot()
        return {key: stats[key] for key in stats if key in COUNTERS or key.startswith("dropped_")}

    def queue_lengths(self) -> dict[str, int]:
        """Groups in `prompts`, `partials`, `samples` (published, not acknowledged) and `pending` (the part
        of `samples` delivered to a trainer and not acknowledged)."""
        stats = self.snapshot()
        return {key: stats[key] for key in ("prompts", "partials", "samples", "pending")}

    def in_flight(self) -> int:
        """Groups taken by rollout and not yet published, recycled, dropped or reclaimed."""
        value = self.client.hget(self.keys.counters, "in_flight")
        return int(value) if value is not None else 0

    def dump_state(self) -> bytes:
        """Every key of this run, read in one MULTI/EXEC, as msgpack of Redis `DUMP` payloads (no pickle).

        Saved beside a checkpoint's weights so a resumed run continues from the buffer those weights saw:
        the dataset cursor, counters, partials, the stream with its consumer group, and the groups in flight
        (the `taken` hash of each lease owner).
        """
        names = [f.name for f in fields(BufferKeys)]
        owners: list[str] = []

        def read(pipe: redis.client.Pipeline) -> None:
            owners[:] = sorted(o.decode() for o in pipe.smembers(self._lease_keys[0]))  # WATCHed: a change retries
            pipe.multi()
            for key in [getattr(self.keys, name) for name in names] + [self._taken_of(o) for o in owners]:
                pipe.dump(key)

        dumps = self.client.transaction(read, self._lease_keys[0])
        state = dict(zip(names, dumps[: len(names)], strict=True))
        state["taken"] = dict(zip(owners, dumps[len(names) :], strict=True))
        return msgpack.packb(state, use_bin_type=True)

    def restore_state(self, state: bytes) -> None:
        """Put this run's keys back as `dump_state` saw them (keys absent then are deleted), in one MULTI/EXEC.

        Every current lease is dropped; groups in flight at the dump are put back in `partials` at once, counted
        reclaimed (their takers belong to the run that was checkpointed). The payloads must come from a server
        whose RDB version this one reads (the same Redis or Valkey, or an older one).
        """
        dumps = msgpack.unpackb(state, raw=False)
        pipe = self.client.pipeline(transaction=True)
        self._forget(keys=self._lease_keys[:1], args=[self._prefix], client=pipe)
        for name in (f.name for f in fields(BufferKeys)):
            key = getattr(self.keys, name)
            pipe.delete(key)
            if dumps.get(name) is not None:
                pipe.restore(key, 0, dumps[name], replace=True)
        for owner, dump in dumps.get("taken", {}).items():  # checkpoints before leases have none
            if dump is not None:
                pipe.restore(self._taken_of(owner), 0, dump, replace=True)
                pipe.sadd(self._lease_keys[0], owner)
        self._reclaim(
            keys=[self._lease_keys[0], self.keys.partials, self.keys.counters], args=[self._prefix], client=pipe
        )
        pipe.execute()
        self._held.clear()
        self._has_consumer_group = False
        self._outstanding.clear()
        self._recovered.clear()

    def clear(self) -> None:
        """Delete every key of this run (all queues, counters, leases, the version and the dataset cursor)."""
        self._forget(keys=self._lease_keys[:1], args=[self._prefix])
        self.client.delete(*(getattr(self.keys, f.name) for f in fields(BufferKeys)))
        self._held.clear()

    def close(self) -> None:
        """Stop the heartbeat and close the connection pool (the data stays in Redis; held leases then expire)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        self.client.close()

    # -- internals ----------------------------------------------------------------------------------

    def _ensure_consumer_group(self) -> None:
        if self._has_consumer_group:
            return
        try:
            self.client.xgroup_create(self.keys.samples, CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):  # another reader created it first: fine
                raise
        self._has_consumer_group = True

    def _own_pending(self, consumer: str, need: int) -> list[tuple[bytes, dict]]:
        """This consumer's unacknowledged entries left by an earlier process under the same name.

        Only this instance adds entries to its consumers' pending lists afterwards, so once a scan comes back
        short the consumer is recovered and later calls skip the round trip.
        """
        if consumer in self._recovered:
            return []
        found: list[tuple[bytes, dict]] = []
        start: bytes | str = "0"
        while len(found) < need:
            reply = self.client.xreadgroup(
                CONSUMER_GROUP, consumer, {self.keys.samples: start}, count=need - len(found)
            )
            page = reply[0][1] if reply else []
            if not page:
                self._recovered.add(consumer)
                break
            found += [(i, f) for i, f in page if f and i.decode() not in self._outstanding]
            start = page[-1][0]
        if found:
            logger.warning("re-delivering %d groups consumer %s read but did not acknowledge", len(found), consumer)
        return found

    def _claim_idle(self, consumer: str, need: int) -> list[tuple[bytes, dict]]:
        found: list[tuple[bytes, dict]] = []
        cursor: bytes | str = "0-0"
        while len(found) < need:
            cursor, page, _deleted = self.client.xautoclaim(
                self.keys.samples,
                CONSUMER_GROUP,
                consumer,
                self.redelivery_idle_ms,
                start_id=cursor,
                count=need - len(found),
            )
            found += [(i, f) for i, f in page if i.decode() not in self._outstanding]
            if cursor in (b"0-0", "0-0"):
                break
        if found:
            logger.warning("re-delivering %d groups left unacknowledged by another trainer consumer", len(found))
        return found

    def _read_new(self, consumer: str, need: int, wait_ms: int) -> list[tuple[bytes, dict]]:
        # BLOCK 0 would wait forever in Redis; a non-positive wait means "do not block".
        block = wait_ms if wait_ms > 0 else None
        reply = self.client.xreadgroup(CONSUMER_GROUP, consumer, {self.keys.samples: ">"}, count=need, block=block)
        return reply[0][1] if reply else []

    def _admit(self, entries: list[tuple[bytes, dict]], trainer_version: int, batch: Batch) -> None:
        """Decode entries' summaries into `batch`; acknowledge and count the stale ones."""
        stale: list[str] = []
        for entry_id, values in entries:
            batch.bytes_read += len(entry_id) + sum(len(k) + len(v) for k, v in values.items())
            try:
                summary = decode_summary(values[b"summary"])
                version = int(values[b"version"])
            except (KeyError, ValueError, DataError) as err:
                raise DataError(f"stream {self.keys.samples} entry {entry_id.decode()} is unreadable: {err}") from err
            if is_fresh(summary, trainer_version, self.max_staleness):
                batch.summaries.append(summary)
                batch.entry_ids.append(entry_id.decode())
                batch.versions.append(version)
            else:
                stale.append(entry_id.decode())
        if stale:
            batch.num_dropped_stale += self._settle_entries(stale, "dropped_stale")
            logger.info("dropped %d stale groups (trainer version %d)", len(stale), trainer_version)

    def _settle_entries(self, entry_ids: Sequence[str], counter: str) -> int:
        if not entry_ids:
            return 0
        return int(
            self._settle(
                keys=[self.keys.samples, self.keys.counters, self.keys.payloads],
                args=[CONSUMER_GROUP, counter, *entry_ids],
            )
        )

    def _taken_of(self, owner: str) -> str:
        return f"{self._prefix}taken:{owner}"

    def _release_groups(
        self, kind: str, counter: str, groups: Sequence[Group], destination: str, *, version: int = 0
    ) -> None:
        """Move the `groups` this owner holds out of flight (`leases.RELEASE`), counting them under `counter`.

        A group it no longer holds (reclaimed after its lease lapsed) is left alone and logged: the reclaimed
        copy is the one that counts, so no group leaves flight twice.
        """
        if not groups:
            return
        args: list[str | int | bytes] = [kind, counter, version]
        for group in groups:
            payload = b"" if kind == "drop" else encode_group(group)
            summary = encode_summary(GroupSummary.of(group)) if kind == "publish" else b""
            args += [self._held.get(group.group_id, ""), payload, summary]
        keys = [self._taken_key, self.keys.counters, destination, self.keys.payloads]
        released = int(self._release(keys=keys, args=args))
        for group in groups:
            self._held.pop(group.group_id, None)
        if released < len(groups):
            logger.warning(
                "%d of %d groups to %s were no longer leased to %s (reclaimed after its lease lapsed); ignored",
                len(groups) - released,
                len(groups),
                kind,
                self.owner,
            )
