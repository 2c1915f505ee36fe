"""The native scheduler's prefill chunking: similar lengths together, padded size within the budget."""

from __future__ import annotations

import random
from types import SimpleNamespace

from slime_rl.engines.native.scheduler import Scheduler


def chunks_of(lengths: list[int], budget: int) -> list[list[int]]:
    batch = [(SimpleNamespace(rid=str(i)), [0] * n) for i, n in enumerate(lengths)]
    scheduler = SimpleNamespace(max_prefill_tokens=budget)
    return [[len(prompt) for _, prompt in chunk] for chunk in Scheduler._prefill_chunks(scheduler, batch)]


def test_short_fresh_prompts_do_not_pad_to_a_long_resumed_one():
    assert chunks_of([12, 300, 14, 13], budget=4096) == [[12, 13, 14], [300]]


def test_each_chunk_fits_the_budget_and_every_prompt_is_prefilled_once():
    rng = random.Random(0)
    lengths = [rng.randint(1, 400) for _ in range(200)]
    chunks = chunks_of(lengths, budget=1024)
    assert sorted(n for chunk in chunks for n in chunk) == sorted(lengths)
    for chunk in chunks:
        assert chunk == sorted(chunk)
        assert len(chunk) * max(chunk) <= 1024


def test_a_prompt_longer_than_the_budget_runs_alone():
    assert chunks_of([10, 5000, 20], budget=4096) == [[10, 20], [5000]]


def test_padding_stays_within_twice_the_real_tokens():
    rng = random.Random(1)
    lengths = [rng.choice([rng.randint(8, 16), rng.randint(100, 400)]) for _ in range(100)]
    for chunk in chunks_of(lengths, budget=4096):
        assert len(chunk) * max(chunk) <= 2 * sum(chunk)
