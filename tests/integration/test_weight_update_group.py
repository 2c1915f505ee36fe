"""The trainer's weight-update group against engines with several ranks, built the way SGLang builds them.

Engine "tp2" has two ranks (as with TP=2) built by the native engine's code; engine "sglang" has one rank
built step by step as SGLang builds it (weight_ranks.py), so a trainer side whose store keys or prefixes
differ from SGLang's cannot join (its ranks give up after `weight_ranks.TIMEOUT_S`). Ranks: the trainer is
0, "tp2" holds 1 and 2, "sglang" 3 (1 + the ranks of the engine before it); world size 4.

Sessions: "tp2" behaves like SGLang 0.5.23 (updates only inside `/begin_weight_update` ...
`/end_weight_update`), "sglang" like 0.5.15 (no such endpoints: 404).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import pytest
import torch

from slime_rl.errors import ServiceError
from tests.integration.test_weight_publish import FakeEngine, within_guard
from tests.integration.weight_ranks import TIMEOUT_S, tensor_record

UPDATE = "/update_weights_from_distributed"
BEGIN, END = "/begin_weight_update", "/end_weight_update"


def weights(seed: int) -> dict[str, torch.Tensor]:
    """Tensors of several dtypes, two of which fill a 1 KiB bucket alone."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(16, 16, generator=generator),  # 1 KiB: a bucket of its own
        "norm.weight": torch.randn(16, generator=generator).to(torch.bfloat16),
        "lm_head.weight": torch.randn(8, 16, generator=generator).to(torch.bfloat16),
        "rotary.inv_freq": torch.randint(-(2**40), 2**40, (4,), generator=generator),  # int64
    }


@pytest.fixture
def engines() -> Iterator[tuple[FakeEngine, FakeEngine]]:
    tp2 = FakeEngine(num_ranks=2, recipe="native", sessions=True)
    sglang = FakeEngine(num_ranks=1, recipe="sglang")
    try:
        yield tp2, sglang
    finally:
        tp2.close()
        sglang.close()


@pytest.mark.parametrize("send_format", ["flattened_bucket", "per_tensor"])
def test_publish_reaches_every_rank_of_every_engine_bit_exact_with_ranks_from_tp_size(engines, publishers, send_format):
    tp2, sglang = engines
    publisher = publishers(bucket_bytes=1024, timeout_s=TIMEOUT_S, send_format=send_format)
    for version in (1, 2):
        sent = weights(seed=version)
        assert within_guard(partial(publisher.broadcast, [tp2.url, sglang.url], sent, version)).buckets == 2
        expected = {name: tensor_record(tensor) for name, tensor in sent.items()}
        assert tp2.received == [expected, expected] and sglang.received == [expected]
        assert tp2.version == sglang.version == str(version)

    (tp2_init,), (sglang_init,) = tp2.init_bodies, sglang.init_bodies  # one group for both publishes
    assert (tp2_init["rank_offset"], sglang_init["rank_offset"]) == (1, 3)
    assert tp2_init["world_size"] == sglang_init["world_size"] == 4
    assert tp2_init["group_name"] == sglang_init["group_name"]
    # Every publish runs inside a session where there are sessions; the engine without them is probed once.
    publish_with_session = [BEGIN, UPDATE, UPDATE, END]
    assert tp2.posts == ["/init_weights_update_group", *publish_with_session, *publish_with_session]
    assert sglang.posts == ["/init_weights_update_group", BEGIN, UPDATE, UPDATE, UPDATE, UPDATE]


def test_failed_publish_closes_the_session_and_the_next_publish_opens_a_new_group_and_session(engines, publishers):
    tp2, sglang = engines
    publisher = publishers(bucket_bytes=1024, timeout_s=TIMEOUT_S)
    urls = [tp2.url, sglang.url]
    within_guard(partial(publisher.broadcast, urls, weights(seed=1), 1))
    tp2.fail_updates = 1
    error = within_guard(partial(publisher.broadcast, urls, weights(seed=2), 2))
    assert isinstance(error, ServiceError) and "cannot load: boom" in str(error)
    assert tp2.posts[-4:] == [BEGIN, UPDATE, "/destroy_weights_update_group", END] and not tp2.session_open
    assert sglang.destroy_calls == 1 and END not in sglang.posts

    sent = weights(seed=3)
    assert within_guard(partial(publisher.broadcast, urls, sent, 3)).buckets == 2
    expected = {name: tensor_record(tensor) for name, tensor in sent.items()}
    assert tp2.received == [expected, expected] and sglang.received == [expected]
    first, second = (body["group_name"] for body in tp2.init_bodies)
    assert first != second and [body["rank_offset"] for body in sglang.init_bodies] == [3, 3]
