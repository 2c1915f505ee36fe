"""The buffer's redis-py client: bounded retries with backoff that ride out a Redis server restart.

Owns how a buffer connects and for how long it keeps trying; not which server runs (`server`) or what is
stored (`store`). redis-py re-sends a `register_script` script whose SHA the restarted server no longer
knows (NOSCRIPT), so the buffer's Lua moves need nothing more.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

DEFAULT_RECONNECT_TIMEOUT_S = 60.0
_CONNECT_TIMEOUT_S = 5.0  # one connection attempt; a restarting local server refuses at once instead
_BACKOFF = ExponentialBackoff(cap=1.0, base=0.05)  # 0.1, 0.2, 0.4, 0.8, then 1 s between attempts


def reconnect_retry(timeout_s: float) -> Retry:
    """Retry on connection errors and timeouts, backing off for at least `timeout_s` seconds in total."""
    retries, waited_s = 0, 0.0
    while waited_s < timeout_s:
        retries += 1
        waited_s += _BACKOFF.compute(retries)
    return Retry(_BACKOFF, retries, supported_errors=(redis.ConnectionError, redis.TimeoutError))


def connect(url: str, reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S) -> redis.Redis:
    """A client for `url` whose commands retry through `reconnect_timeout_s` of server downtime.

    A retried command may run twice if the server applied it and died before replying. The buffer's releases
    and acknowledgements are idempotent (fenced by lease and by XACK); a retried take pops again, and the
    groups of the lost reply stay leased to the taker until its lease expires after it ends.
    """
    return redis.Redis.from_url(
        url, retry=reconnect_retry(reconnect_timeout_s), socket_connect_timeout=_CONNECT_TIMEOUT_S
    )
