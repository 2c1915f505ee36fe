"""`RedisBuffer`: the central buffer between rollout workers and the trainer (DESIGN.md §2).

Owns the Redis keys of one run, the moves of groups between them and the counters that account for
every group. It does not own the wire format (`codec`), the prompt dataset and its cursor (`dataset`),
or how a batch is split across ranks (`batching`).

Keys, all under `slime:{run_id}:`:
    prompts   list of encoded prompt groups, refilled from the dataset, popped from the left
    partials  list of recycled (APRIL) groups, taken before fresh prompts
    samples   stream of finished groups, fields `version` (weight version at publish) and `data`
    version   the last published weight version (absent = 0)
    counters  hash of the counters below, all counted in groups
    dataset   hash of the prompt dataset cursor (owned by `slime_rl.buffer.dataset`)

Counters (cumulative, in groups):
    issued          fresh prompt groups handed to rollout by `take_groups` (recycled partials are not
                    issued again)
    recycled        `put_partials` calls' groups; one group recycled three times counts three
    completed       groups published to the stream
    dropped_<why>   groups dropped: `dropped_filter` (and any other reason) by `record_drops` on the
                    rollout side, `dropped_stale` by the staleness filter on read
    trained         groups acknowledged after an optimizer step committed
    in_flight       (a gauge) groups taken by rollout and not yet published, recycled or dropped

Invariant, kept by making every move and its counter update one MULTI/EXEC or Lua call:
    issued = trained + sum(dropped_*) + in_flight + buffered,  buffered = len(partials) + len(samples)
where `samples` holds published groups not yet acknowledged (delivered or not): acknowledging a group
deletes its stream entry, so nothing is trained twice and the stream does not grow without bound.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields

import msgpack
import redis

from slime_rl.buffer.codec import decode_group, encode_group
from slime_rl.buffer.staleness import is_fresh
from slime_rl.errors import DataError
from slime_rl.types import Group

logger = logging.getLogger(__name__)

CONSUMER_GROUP = "trainer"
COUNTERS = ("issued", "completed", "recycled", "dropped_filter", "dropped_stale", "trained")
DEFAULT_REDELIVERY_IDLE_MS = 600_000
_REASON = re.compile(r"[a-z][a-z0-9_]*")

# KEYS: partials, prompts, counters, version. ARGV: n.
# Returns [num_partials, version, group...]: partials first, then fresh prompts.
_TAKE = """
local n = tonumber(ARGV[1])
local out = redis.call('LPOP', KEYS[1], n) or {}
local num_partial = #out
if num_partial < n then
  local fresh = redis.call('LPOP', KEYS[2], n - num_partial) or {}
  for _, g in ipairs(fresh) do out[#out + 1] = g end
end
if #out > num_partial then redis.call('HINCRBY', KEYS[3], 'issued', #out - num_partial) end
if #out > 0 then redis.call('HINCRBY', KEYS[3], 'in_flight', #out) end
table.insert(out, 1, num_partial)
table.insert(out, 2, redis.call('GET', KEYS[4]) or '0')
return out
"""

# KEYS: samples, counters. ARGV: consumer group, counter field, entry ids...
# Acknowledges and deletes each entry; counts only entries this call acknowledged, so a second ack of
# the same entry (e.g. by a consumer whose entries were re-delivered elsewhere) changes nothing.
_SETTLE = """
local n = 0
for i = 3, #ARGV do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    redis.call('XDEL', KEYS[1], ARGV[i])
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
    version: str
    counters: str
    dataset: str

    @classmethod
    def for_run(cls, run_id: str) -> BufferKeys:
        prefix = f"slime:{run_id}:"
        return cls(**{f.name: prefix + f.name for f in fields(cls)})


@dataclass(slots=True, kw_only=True)
class Batch:
    """Groups read by one trainer consumer. Pass it to `RedisBuffer.ack` once the optimizer step commits."""

    groups: list[Group]
    entry_ids: list[str]  # stream entry of each group, same order
    versions: list[int]  # weight version each group was published under, same order
    num_dropped_stale: int = 0  # groups this read dropped as stale (already counted and acknowledged)

    def extend(self, other: Batch) -> None:
        """Append the groups of a later read by the same consumer."""
        self.groups += other.groups
        self.entry_ids += other.entry_ids
        self.versions += other.versions
        self.num_dropped_stale += other.num_dropped_stale


class RedisBuffer:
    """Synchronous buffer API used by rollout (take, recycle, publish, drop) and trainer (read, ack).

    Args:
        client: a redis-py client with `decode_responses=False`.
        run_id: namespace of every key.
        max_staleness: `read_batch` drops groups whose oldest token lags the trainer by more versions;
            None keeps every group.
        redelivery_idle_ms: a group another consumer read but did not acknowledge for this long is
            re-delivered (that consumer is presumed dead). Make it longer than the slowest optimizer step.
    """

    def __init__(
        self,
        client: redis.Redis,
        run_id: str,
        max_staleness: int | None = None,
        *,
        redelivery_idle_ms: int = DEFAULT_REDELIVERY_IDLE_MS,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.keys = BufferKeys.for_run(run_id)
        self.max_staleness = max_staleness
        self.redelivery_idle_ms = redelivery_idle_ms
        self._take = client.register_script(_TAKE)
        self._settle = client.register_script(_SETTLE)
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
    ) -> RedisBuffer:
        return cls(redis.Redis.from_url(url), run_id, max_staleness, redelivery_idle_ms=redelivery_idle_ms)

    # -- rollout side -------------------------------------------------------------------------------

    def put_prompts(self, groups: Sequence[Group]) -> None:
        """Append prompt groups to `prompts`. Not counted: a prompt group counts once it is issued."""
        if groups:
            self.client.rpush(self.keys.prompts, *[encode_group(g) for g in groups])

    def take_groups(self, n: int) -> list[Group]:
        """Take at most `n` groups: recycled partials first (oldest first), then fresh prompts.

        Fresh groups count as issued and have `created_version` set to the published weight version.
        Every returned group counts as in flight until it is published, recycled or dropped.
        """
        if n <= 0:
            return []
        num_partial, version, *payloads = self._take(
            keys=[self.keys.partials, self.keys.prompts, self.keys.counters, self.keys.version], args=[n]
        )
        groups = [decode_group(p) for p in payloads]
        for group in groups[num_partial:]:
            for sample in group.samples:
                sample.created_version = int(version)
        return groups

    def put_partials(self, groups: Sequence[Group]) -> None:
        """Return in-flight groups with unfinished samples, to be taken first next time. Counts recycled."""
        if not groups:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.rpush(self.keys.partials, *[encode_group(g) for g in groups])
        pipe.hincrby(self.keys.counters, "recycled", len(groups))
        pipe.hincrby(self.keys.counters, "in_flight", -len(groups))
        pipe.execute()

    def publish(self, groups: Sequence[Group], version: int) -> None:
        """Append finished in-flight groups to the `samples` stream, tagged with `version`. Counts completed.

        Raises ValueError if a group still has unfinished samples (those go to `put_partials`).
        """
        if not groups:
            return
        for group in groups:
            if not group.is_finished:
                raise ValueError(f"group {group.group_id} has unfinished samples; recycle it with put_partials")
        pipe = self.client.pipeline(transaction=True)
        for group in groups:
            pipe.xadd(self.keys.samples, {"version": version, "data": encode_group(group)})
        pipe.hincrby(self.keys.counters, "completed", len(groups))
        pipe.hincrby(self.keys.counters, "in_flight", -len(groups))
        pipe.execute()

    def record_drops(self, reason: str, num_groups: int) -> None:
        """Count `num_groups` in-flight groups the rollout side discarded, under `dropped_<reason>`."""
        if not _REASON.fullmatch(reason) or reason == "stale":
            raise ValueError(
                f"drop reason {reason!r} must be a lowercase identifier such as 'filter'; 'stale' is counted by "
                "read_batch"
            )
        if num_groups <= 0:
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.hincrby(self.keys.counters, f"dropped_{reason}", num_groups)
        pipe.hincrby(self.keys.counters, "in_flight", -num_groups)
        pipe.execute()

    # -- trainer side -------------------------------------------------------------------------------

    def read_batch(self, consumer: str, num_groups: int, block_ms: int, trainer_version: int) -> Batch:
        """Read up to `num_groups` fresh groups as trainer consumer `consumer`.

        Sources, in order: this consumer's own unacknowledged entries from an earlier process (a restart
        under the same name), entries of other consumers idle for `redelivery_idle_ms` (XAUTOCLAIM), then
        new entries. Stale groups (see `is_fresh`) are acknowledged, deleted and counted as dropped_stale;
        they do not count toward `num_groups`. Waits up to `block_ms` in total for the batch to fill
        (0 = do not wait) and returns what it has then, possibly fewer groups.
        """
        self._ensure_consumer_group()
        deadline = time.monotonic() + block_ms / 1000
        batch = Batch(groups=[], entry_ids=[], versions=[])
        while len(batch.groups) < num_groups:
            need = num_groups - len(batch.groups)
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
        """Groups taken by rollout and not yet published, recycled or dropped."""
        value = self.client.hget(self.keys.counters, "in_flight")
        return int(value) if value is not None else 0

    def dump_state(self) -> bytes:
        """Every key of this run, read in one MULTI/EXEC, as msgpack of Redis `DUMP` payloads (no pickle).

        Saved beside a checkpoint's weights so a resumed run continues from the buffer those weights saw:
        the dataset cursor, counters, partials and the stream with its consumer group.
        """
        names = [f.name for f in fields(BufferKeys)]
        pipe = self.client.pipeline(transaction=True)
        for name in names:
            pipe.dump(getattr(self.keys, name))
        return msgpack.packb(dict(zip(names, pipe.execute(), strict=True)), use_bin_type=True)

    def restore_state(self, state: bytes) -> None:
        """Put this run's keys back as `dump_state` saw them (keys absent then are deleted), in one MULTI/EXEC.

        The payloads must come from a server whose RDB version this one reads (the same Redis or Valkey,
        or an older one).
        """
        dumps = msgpack.unpackb(state, raw=False)
        pipe = self.client.pipeline(transaction=True)
        for name in (f.name for f in fields(BufferKeys)):
            key = getattr(self.keys, name)
            pipe.delete(key)
            if dumps.get(name) is not None:
                pipe.restore(key, 0, dumps[name], replace=True)
        pipe.execute()
        self._has_consumer_group = False
        self._outstanding.clear()
        self._recovered.clear()

    def clear(self) -> None:
        """Delete every key of this run (all queues, counters, the version and the dataset cursor)."""
        self.client.delete(*(getattr(self.keys, f.name) for f in fields(BufferKeys)))

    def close(self) -> None:
        """Close the connection pool (the data stays in Redis)."""
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
        """Decode entries into `batch`; acknowledge and count the stale ones."""
        stale: list[str] = []
        for entry_id, values in entries:
            try:
                group = decode_group(values[b"data"])
                version = int(values[b"version"])
            except (KeyError, ValueError) as err:
                raise DataError(f"stream {self.keys.samples} entry {entry_id.decode()} is unreadable: {err}") from err
            if is_fresh(group, trainer_version, self.max_staleness):
                batch.groups.append(group)
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
            self._settle(keys=[self.keys.samples, self.keys.counters], args=[CONSUMER_GROUP, counter, *entry_ids])
        )
