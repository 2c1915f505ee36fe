"""Leases on taken groups: a dead taker's groups come back to the buffer (DESIGN.md §5, Faults).

Owns the lease keys of one run, the Lua scripts that move groups into rollout's hands (take) and out of
them (publish, recycle, drop, reclaim) together with their counters, and the heartbeat thread that keeps an
owner's lease alive. `RedisBuffer` (`store`) runs the scripts; it owns the keys and the API.

Keys, all under `slime:{run_id}:`:
    owners          set of owner ids that took groups (one per `RedisBuffer` that takes)
    lease:{owner}   the owner's liveness token, a string with a TTL of `lease_s`, renewed by `Heartbeat`
    taken:{owner}   hash of the groups the owner holds: sha1 of the payload -> the payload as taken

An owner whose token has expired is dead: the next take (by anyone) or `reclaim_expired` moves its taken
payloads to `partials`, counted `reclaimed`, and forgets the owner. Releases are fenced: a publish, recycle
or drop applies only to groups the owner still holds, so a live owner whose lease lapsed (a stall longer
than `lease_s`) cannot return a group a second time after it was reclaimed.
"""

from __future__ import annotations

import hashlib
import logging
import threading

import redis

logger = logging.getLogger(__name__)

DEFAULT_LEASE_S = 30.0

# Lua function shared by the take script and `RECLAIM`: (owners, partials, counters, key prefix) -> groups
# reclaimed. It reaches the per-owner keys by name rather than through KEYS, which standalone Redis allows.
# RPUSH in chunks: unpack() of a very long list would overflow the Lua stack.
RECLAIM_FN = """
local function reclaim(owners_key, partials_key, counters_key, prefix)
  local n = 0
  for _, owner in ipairs(redis.call('SMEMBERS', owners_key)) do
    if redis.call('EXISTS', prefix .. 'lease:' .. owner) == 0 then
      local taken = prefix .. 'taken:' .. owner
      local payloads = redis.call('HVALS', taken)
      for i = 1, #payloads, 1000 do
        redis.call('RPUSH', partials_key, unpack(payloads, i, math.min(i + 999, #payloads)))
      end
      n = n + #payloads
      redis.call('DEL', taken)
      redis.call('SREM', owners_key, owner)
    end
  end
  if n > 0 then
    redis.call('HINCRBY', counters_key, 'reclaimed', n)
    redis.call('HINCRBY', counters_key, 'in_flight', -n)
  end
  return n
end
"""

# KEYS: owners, partials, counters. ARGV: key prefix.
RECLAIM = RECLAIM_FN + "return reclaim(KEYS[1], KEYS[2], KEYS[3], ARGV[1])"

# KEYS: partials, prompts, counters, version, owners, lease, taken (the last two the taker's).
# ARGV: n, owner, lease_ms, key prefix. Returns [num_reclaimed, num_partials, version, group...]: partials
# first (reclaimed ones among them), then fresh prompts, every one leased to the taker.
# The taker's own lease is renewed first, so a taker never reclaims its own groups.
TAKE = (
    RECLAIM_FN
    + """
redis.call('SET', KEYS[6], '1', 'PX', ARGV[3])
local num_reclaimed = reclaim(KEYS[5], KEYS[1], KEYS[3], ARGV[4])
local n = tonumber(ARGV[1])
local out = redis.call('LPOP', KEYS[1], n) or {}
local num_partial = #out
if num_partial < n then
  local fresh = redis.call('LPOP', KEYS[2], n - num_partial) or {}
  for _, g in ipairs(fresh) do out[#out + 1] = g end
end
if #out > num_partial then redis.call('HINCRBY', KEYS[3], 'issued', #out - num_partial) end
if #out > 0 then
  redis.call('HINCRBY', KEYS[3], 'in_flight', #out)
  redis.call('SADD', KEYS[5], ARGV[2])
  for _, g in ipairs(out) do redis.call('HSET', KEYS[7], redis.sha1hex(g), g) end
end
table.insert(out, 1, num_reclaimed)
table.insert(out, 2, num_partial)
table.insert(out, 3, redis.call('GET', KEYS[4]) or '0')
return out
"""
)

# KEYS: taken (the owner's), counters, destination (samples stream or partials list; unused for 'drop'),
# payloads (the hash of published groups' payloads by stream entry id; used by 'publish').
# ARGV: kind ('publish' | 'recycle' | 'drop'), counter, version, then (lease field, payload, summary) triples.
# Applies the move and the counters only to groups the owner still holds; returns how many that was.
# A published group's stream entry carries its version and summary; its payload goes to `payloads`.
RELEASE = """
local held = 0
for i = 4, #ARGV, 3 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    held = held + 1
    if ARGV[1] == 'publish' then
      local id = redis.call('XADD', KEYS[3], '*', 'version', ARGV[3], 'summary', ARGV[i + 2])
      redis.call('HSET', KEYS[4], id, ARGV[i + 1])
    elseif ARGV[1] == 'recycle' then
      redis.call('RPUSH', KEYS[3], ARGV[i + 1])
    end
  end
end
if held > 0 then
  redis.call('HINCRBY', KEYS[2], ARGV[2], held)
  redis.call('HINCRBY', KEYS[2], 'in_flight', -held)
end
return held
"""

# KEYS: owners. ARGV: key prefix. Deletes every owner's token and taken hash, and the owner set.
FORGET = """
for _, owner in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('DEL', ARGV[1] .. 'lease:' .. owner, ARGV[1] .. 'taken:' .. owner)
end
return redis.call('DEL', KEYS[1])
"""


def lease_field(payload: bytes) -> str:
    """The field a taken payload is held under in `taken:{owner}` (the same digest as Lua's `redis.sha1hex`)."""
    return hashlib.sha1(payload).hexdigest()


class Heartbeat:
    """Daemon thread renewing one owner's lease token every `lease_s / 3` until `stop()`.

    A thread, not an asyncio task, so the lease stays alive while the owner's event loop is busy; it dies with
    the process, which is what lets the lease expire. A failed renewal (Redis restarting) is logged and
    retried at the next beat; two missed beats in a row still leave the lease alive.
    """

    def __init__(self, client: redis.Redis, lease_key: str, lease_s: float) -> None:
        self._client = client
        self._key = lease_key
        self._lease_ms = max(1, int(lease_s * 1000))
        self._interval_s = lease_s / 3
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-heartbeat-{lease_key}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing (the lease then expires unless the owner takes again). Waits for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                self._client.set(self._key, "1", px=self._lease_ms)
            except redis.RedisError as err:  # the retry boundary: the next beat tries again
                logger.warning("lease heartbeat for %s failed: %s; retrying in %.1fs", self._key, err, self._interval_s)
            if self._stop.wait(self._interval_s):
                return
