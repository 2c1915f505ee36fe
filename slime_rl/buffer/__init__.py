"""The central Redis buffer: wire codec, `RedisBuffer` store, prompt datasets, DP batching, run stats.

Modules: `codec` (Group <-> msgpack bytes), `store` (RedisBuffer, Batch, the keys and counters), `staleness`
(the one freshness rule), `dataset` (prompt files and the resumable cursor), `batching` (token-balanced
data-parallel split), `stats` (`slime-rl buffer stats`), `server` (the embedded Redis process and its supervisor),
`leases` (taken groups leased to their taker; a dead taker's come back), `connection` (the client's reconnect policy).
"""

from slime_rl.buffer.batching import partition_balanced, split_groups, split_samples
from slime_rl.buffer.codec import decode_group, encode_group
from slime_rl.buffer.dataset import Cursor, PromptDataset, fill_prompts, load_cursor
from slime_rl.buffer.staleness import is_fresh
from slime_rl.buffer.store import COUNTERS, Batch, BufferKeys, RedisBuffer

__all__ = [
    "COUNTERS",
    "Batch",
    "BufferKeys",
    "Cursor",
    "PromptDataset",
    "RedisBuffer",
    "decode_group",
    "encode_group",
    "fill_prompts",
    "is_fresh",
    "load_cursor",
    "partition_balanced",
    "split_groups",
    "split_samples",
]
