"""`buffer_stats` and its table against a real embedded Redis."""

from __future__ import annotations

import io
import uuid

from rich.console import Console

from slime_rl.buffer.stats import buffer_stats, format_stats
from slime_rl.buffer.store import RedisBuffer
from slime_rl.types import Group, Sample, Status


def test_buffer_stats_reports_counters_queues_and_consistency(redis_url):
    run_id = f"test-{uuid.uuid4().hex}"
    buffer = RedisBuffer.from_url(redis_url, run_id)
    groups = [Group(group_id=f"g{i}", samples=[Sample(uid=f"u{i}", group_id=f"g{i}", index=0, prompt_ids=[1])])
              for i in range(4)]  # fmt: skip
    buffer.put_prompts(groups)
    taken = buffer.take_groups(3)
    taken[0].samples[0].status = Status.COMPLETED
    buffer.publish(taken[:1], version=0)
    buffer.record_drops("filter", taken[1:2])

    stats = buffer_stats(redis_url, run_id)
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(format_stats(stats, run_id))
    text = console.export_text()

    assert {k: stats[k] for k in ("issued", "completed", "dropped_filter", "in_flight", "prompts", "samples")} == {
        "issued": 3, "completed": 1, "dropped_filter": 1, "in_flight": 1, "prompts": 1, "samples": 1
    }  # fmt: skip
    assert stats["unaccounted"] == 0
    assert "dropped_filter" in text and run_id in text
    buffer.clear()
    buffer.client.close()


def test_buffer_stats_of_an_unknown_run_is_all_zero(redis_url):
    stats = buffer_stats(redis_url, f"nothing-{uuid.uuid4().hex}")

    assert stats["issued"] == stats["samples"] == stats["pending"] == stats["unaccounted"] == 0
    assert all(isinstance(value, int) for value in stats.values())
