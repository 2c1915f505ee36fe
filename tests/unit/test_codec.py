"""Group codec: exact round trips and loud errors on bad payloads."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slime_rl.buffer.codec import decode_group, decode_share, decode_summary, encode_group, encode_share, encode_summary
from slime_rl.errors import DataError
from slime_rl.types import Group, GroupSummary, Sample, Status, TrainShare

_text = st.text(max_size=8)
_json_leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | _text
_metadata = st.dictionaries(_text, st.recursive(_json_leaf, lambda c: st.lists(c, max_size=3), max_leaves=5))


@st.composite
def samples(draw, group_id: str, index: int) -> Sample:
    num_response = draw(st.integers(0, 40))
    floats = st.floats(width=32, allow_nan=False)
    return Sample(
        uid=draw(_text),
        group_id=group_id,
        index=index,
        prompt_ids=draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=40)),
        response_ids=draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=num_response, max_size=num_response)),
        rollout_logprobs=draw(st.lists(floats, min_size=num_response, max_size=num_response)),
        loss_mask=draw(st.lists(st.integers(0, 1), min_size=num_response, max_size=num_response)),
        reward=draw(st.none() | st.floats(allow_nan=False)),
        status=draw(st.sampled_from(list(Status))),
        label=draw(st.none() | _text),
        metadata=draw(_metadata),
        weight_spans=draw(st.lists(st.tuples(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99)), max_size=3)),
        created_version=draw(st.integers(0, 10**6)),
        reward_info=draw(st.dictionaries(_text, st.floats(allow_nan=False), max_size=3)),
    )


@st.composite
def groups(draw) -> Group:
    group_id = draw(_text)
    size = draw(st.integers(0, 4))
    return Group(group_id=group_id, samples=[draw(samples(group_id, i)) for i in range(size)])


def assert_same(a: Group, b: Group) -> None:
    assert a.group_id == b.group_id
    assert len(a.samples) == len(b.samples)
    for x, y in zip(a.samples, b.samples, strict=True):
        for name in ("prompt_ids", "response_ids", "rollout_logprobs", "loss_mask"):
            left, right = getattr(x, name), getattr(y, name)
            assert left.dtype == right.dtype and np.array_equal(left, right), name
        for name in ("uid", "index", "reward", "status", "label", "metadata", "weight_spans", "created_version"):
            assert getattr(x, name) == getattr(y, name), name
        assert x.reward_info == y.reward_info


@settings(max_examples=60, deadline=None)
@given(groups())
def test_codec_round_trip_is_exact(group):
    assert_same(decode_group(encode_group(group)), group)


def test_codec_decoded_arrays_are_writable_and_independent():
    group = Group(
        group_id="g",
        samples=[
            Sample(uid=f"u{i}", group_id="g", index=i, prompt_ids=[1, 2], response_ids=[3], rollout_logprobs=[-0.5],
                   loss_mask=[1])
            for i in range(2)
        ],
    )  # fmt: skip
    decoded = decode_group(encode_group(group))

    decoded.samples[0].loss_mask[0] = 0

    assert decoded.samples[1].loss_mask.tolist() == [1]


def test_codec_rejects_metadata_msgpack_cannot_hold():
    group = Group(
        group_id="g", samples=[Sample(uid="u", group_id="g", index=0, prompt_ids=[1], metadata={"x": {1, 2}})]
    )

    with pytest.raises(DataError, match="msgpack-serialisable"):
        encode_group(group)


def test_codec_rejects_garbage_bytes():
    with pytest.raises(DataError, match="not valid msgpack"):
        decode_group(b"\xc1 definitely not msgpack")


def test_codec_rejects_payload_of_another_format():
    with pytest.raises(DataError, match="format 99"):
        decode_group(msgpack.packb({"format": 99}))


def test_codec_rejects_truncated_token_blob():
    group = Group(group_id="g", samples=[Sample(uid="u", group_id="g", index=0, prompt_ids=[1, 2, 3])])
    payload = msgpack.unpackb(encode_group(group))
    payload["prompt_ids"] = payload["prompt_ids"][:-4]

    with pytest.raises(DataError, match="'prompt_ids' holds 8 bytes"):
        decode_group(msgpack.packb(payload))


def test_codec_rejects_unknown_status():
    group = Group(group_id="g", samples=[Sample(uid="u", group_id="g", index=0, prompt_ids=[1])])
    payload = msgpack.unpackb(encode_group(group))
    payload["samples"][0][5] = "exploded"

    with pytest.raises(DataError, match="garbled"):
        decode_group(msgpack.packb(payload))


def test_summary_and_share_round_trip():
    group = Group(
        group_id="g",
        samples=[
            Sample(uid="u0", group_id="g", index=0, prompt_ids=[1, 2], response_ids=[3], rollout_logprobs=[0.0],
                   loss_mask=[1], reward=1.0, weight_spans=[(3, 0, 1)]),
            Sample(uid="u1", group_id="g", index=1, prompt_ids=[1, 2], reward=None),
        ],
    )  # fmt: skip
    group.samples[1].fail("engine died")
    summary = decode_summary(encode_summary(GroupSummary.of(group)))
    assert summary == GroupSummary(
        group_id="g", oldest_version=0, rewards=[1.0, 0.0], scored=[True, False], num_tokens=[3, 2],
        response_lens=[1, 0],
    )  # fmt: skip
    share = TrainShare(step=4, entry_ids=["1-0", "2-0"], samples=[(0, 1), (1, 0)], advantages=[0.5, -0.5])
    back = decode_share(encode_share(share))
    assert (back.step, back.entry_ids, back.samples, back.mask_before) == (4, ["1-0", "2-0"], [(0, 1), (1, 0)], None)
    np.testing.assert_array_equal(back.advantages, share.advantages)


def test_summary_and_share_reject_garbage():
    with pytest.raises(DataError, match="group summary"):
        decode_summary(msgpack.packb(["g", "not a version", [], [], [], []]))
    with pytest.raises(DataError, match="train share"):
        decode_share(msgpack.packb({"step": 1}))
