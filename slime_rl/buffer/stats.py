"""`slime-rl buffer stats`: the counters and queue lengths of one run, read from its Redis buffer.

Owns reading and laying out the figures; the CLI owns arguments and printing. Every figure is in groups
(see `slime_rl.buffer.store` for what each counter counts).
"""

from __future__ import annotations

from rich.table import Table

from slime_rl.buffer.store import RedisBuffer

_SECTIONS = {
    "counters": ("issued", "completed", "recycled", "reclaimed", "trained"),
    "queues": ("prompts", "partials", "samples", "pending", "in_flight"),
}
_MEANING = {
    "issued": "fresh prompt groups handed to rollout",
    "completed": "finished groups published to the stream",
    "recycled": "partial groups put back (APRIL); repeats count again",
    "reclaimed": "groups of dead rollout workers put back when their lease expired",
    "trained": "groups acknowledged after an optimizer step",
    "prompts": "prompt groups waiting to be issued",
    "partials": "recycled groups waiting to be taken again",
    "samples": "published groups not yet acknowledged",
    "pending": "of those, delivered to a trainer",
    "in_flight": "groups rollout holds (taken, not yet returned)",
    "unaccounted": "issued - trained - dropped - in_flight - partials - samples; 0 when consistent",
}


def buffer_stats(url: str, run_id: str) -> dict[str, int]:
    """All counters, queue lengths, `unaccounted` and the dataset cursor of run `run_id`, read atomically."""
    buffer = RedisBuffer.from_url(url, run_id)
    try:
        return buffer.snapshot()
    finally:
        buffer.client.close()


def format_stats(stats: dict[str, int], run_id: str) -> Table:
    """A rich table of `buffer_stats`: counters, drops by reason, queues, the invariant check, the dataset."""
    table = Table(title=f"buffer of run {run_id!r} (all figures in groups)")
    table.add_column("section")
    table.add_column("name")
    table.add_column("value", justify="right")
    table.add_column("meaning")
    rows = [(section, key) for section, keys in _SECTIONS.items() for key in keys]
    rows += [("dropped", key) for key in sorted(stats) if key.startswith("dropped_")]
    rows += [("check", "unaccounted")]
    rows += [("dataset", key) for key in sorted(stats) if key.startswith("dataset_")]
    for section, key in rows:
        meaning = _MEANING.get(key, "dropped, reason: " + key.removeprefix("dropped_") if section == "dropped" else "")
        value = stats.get(key, 0)
        style = "bold red" if key == "unaccounted" and value else None
        table.add_row(section, key, str(value), meaning, style=style)
    return table
