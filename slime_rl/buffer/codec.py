"""Binary codec for `Group`: msgpack with per-token arrays as little-endian numpy bytes; and for the small
records that plan a training step without the tokens, `GroupSummary` and `TrainShare`.

Owns the wire format of everything the Redis buffer stores and of what the driver sends trainer ranks.
It never uses pickle: a payload is a msgpack map of plain values, so decoding bytes from the buffer cannot
run code. Per-token arrays of all samples of a group are concatenated into one byte string per field
(int32 ids, float32 logprobs, uint8 mask), so encoding and decoding do no per-token Python work.

Round trips are exact for every field, with msgpack's usual caveat for `metadata`: tuples come back as
lists. Metadata must hold msgpack-serialisable values (str, int, float, bool, None, bytes, list, dict).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from slime_rl.errors import DataError
from slime_rl.types import Group, GroupSummary, Sample, Status, TrainShare

FORMAT_VERSION = 1
_IDS = np.dtype("<i4")
_LOGPROBS = np.dtype("<f4")
_MASK = np.dtype("u1")
# Field order of one sample's scalar record; the arrays live in the group-level blobs.
_SAMPLE_FIELDS = (
    "uid",
    "index",
    "num_prompt",
    "num_response",
    "reward",
    "status",
    "label",
    "metadata",
    "weight_spans",
    "created_version",
    "reward_info",
)


def _blob(arrays: list[np.ndarray], dtype: np.dtype) -> memoryview | bytes:
    if not arrays:
        return b""
    # msgpack packs a memoryview as bin without the extra copy `tobytes` would make.
    return memoryview(np.concatenate(arrays, dtype=dtype))


def encode_group(group: Group) -> bytes:
    """Serialise a group to bytes. Raises DataError if metadata or reward_info is not msgpack-serialisable."""
    samples = group.samples
    records = [
        (
            s.uid,
            s.index,
            len(s.prompt_ids),
            len(s.response_ids),
            s.reward,
            s.status.value,
            s.label,
            s.metadata,
            s.weight_spans,
            s.created_version,
            s.reward_info,
        )
        for s in samples
    ]
    payload = {
        "format": FORMAT_VERSION,
        "group_id": group.group_id,
        "samples": records,
        "prompt_ids": _blob([s.prompt_ids for s in samples], _IDS),
        "response_ids": _blob([s.response_ids for s in samples], _IDS),
        "rollout_logprobs": _blob([s.rollout_logprobs for s in samples], _LOGPROBS),
        "loss_mask": _blob([s.loss_mask for s in samples], _MASK),
    }
    try:
        return msgpack.packb(payload, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as err:
        raise DataError(
            f"group {group.group_id}: cannot encode ({err}); Sample.metadata and reward_info must hold only "
            "msgpack-serialisable values (str, int, float, bool, None, bytes, list, dict)"
        ) from err


def _unpack_map(data: bytes, what: str) -> dict[str, Any]:
    try:
        payload = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (msgpack.UnpackException, ValueError, TypeError) as err:
        raise DataError(f"{what} ({len(data)} bytes) is not valid msgpack: {err}") from err
    if not isinstance(payload, dict):
        raise DataError(f"{what} must be a msgpack map, got {type(payload).__name__}")
    return payload


def encode_summary(summary: GroupSummary) -> bytes:
    return msgpack.packb(
        [
            summary.group_id,
            summary.oldest_version,
            summary.rewards,
            summary.scored,
            summary.num_tokens,
            summary.response_lens,
        ],
        use_bin_type=True,
    )


def decode_summary(data: bytes) -> GroupSummary:
    """Parse bytes written by `encode_summary`; a garbled record raises DataError."""
    try:
        group_id, oldest_version, rewards, scored, num_tokens, response_lens = msgpack.unpackb(data, raw=False)
        return GroupSummary(
            group_id=str(group_id),
            oldest_version=int(oldest_version),
            rewards=[float(r) for r in rewards],
            scored=[bool(s) for s in scored],
            num_tokens=[int(n) for n in num_tokens],
            response_lens=[int(n) for n in response_lens],
        )
    except (msgpack.UnpackException, ValueError, TypeError) as err:
        raise DataError(f"group summary ({len(data)} bytes) is garbled: {err}") from err


def encode_share(share: TrainShare) -> bytes:
    return msgpack.packb(
        {
            "step": share.step,
            "entry_ids": share.entry_ids,
            "samples": share.samples,
            "advantages": memoryview(share.advantages.astype(_LOGPROBS)),
            "mask_before": share.mask_before,
        },
        use_bin_type=True,
    )


def decode_share(data: bytes) -> TrainShare:
    """Parse bytes written by `encode_share`; a garbled message raises DataError."""
    payload = _unpack_map(data, "train share")
    try:
        return TrainShare(
            step=payload["step"],
            entry_ids=[str(e) for e in payload["entry_ids"]],
            samples=payload["samples"],
            advantages=np.frombuffer(payload["advantages"], dtype=_LOGPROBS),
            mask_before=payload["mask_before"],
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"train share is garbled: {err!r}") from err


def _array(payload: dict[str, Any], key: str, dtype: np.dtype, expected: int) -> np.ndarray:
    blob = payload.get(key)
    if not isinstance(blob, bytes):
        raise DataError(f"group payload: field {key!r} must be bytes, got {type(blob).__name__}")
    if len(blob) != expected * dtype.itemsize:
        raise DataError(
            f"group payload: field {key!r} holds {len(blob)} bytes but the samples need "
            f"{expected} x {dtype.itemsize}; the payload is truncated or garbled"
        )
    # One writable copy per field; the per-sample arrays are views into it.
    return np.frombuffer(blob, dtype=dtype).astype(dtype.newbyteorder("="), copy=True)


def _split(array: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    bounds = [0, *np.cumsum(lengths).tolist()]
    return [array[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]


def decode_group(data: bytes) -> Group:
    """Parse bytes written by `encode_group`. A wrong or garbled payload raises DataError saying what is wrong."""
    payload = _unpack_map(data, "group payload")
    if payload.get("format") != FORMAT_VERSION:
        raise DataError(
            f"group payload has format {payload.get('format')!r}, this slime-rl reads format {FORMAT_VERSION}; "
            "it was written by another version or is not a slime-rl group"
        )
    records = payload.get("samples")
    group_id = payload.get("group_id")
    if not isinstance(records, list) or not isinstance(group_id, str):
        raise DataError("group payload: 'group_id' must be a string and 'samples' a list")
    for i, record in enumerate(records):
        if not isinstance(record, list) or len(record) != len(_SAMPLE_FIELDS):
            raise DataError(f"group {group_id}: sample record {i} must be a list of {len(_SAMPLE_FIELDS)} fields")
    try:
        num_prompt = np.array([r[2] for r in records], dtype=np.int64)
        num_response = np.array([r[3] for r in records], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as err:
        raise DataError(f"group {group_id}: token counts must be integers ({err})") from err
    if (num_prompt < 0).any() or (num_response < 0).any():
        raise DataError(f"group {group_id}: negative token count in a sample record")
    if not records:
        return Group(group_id=group_id, samples=[])
    total_response = int(num_response.sum())
    prompt_ids = _array(payload, "prompt_ids", _IDS, int(num_prompt.sum()))
    response_ids = _array(payload, "response_ids", _IDS, total_response)
    logprobs = _array(payload, "rollout_logprobs", _LOGPROBS, total_response)
    loss_mask = _array(payload, "loss_mask", _MASK, total_response)
    rows = zip(
        records,
        _split(prompt_ids, num_prompt),
        _split(response_ids, num_response),
        _split(logprobs, num_response),
        _split(loss_mask, num_response),
        strict=True,
    )
    try:
        samples = [
            Sample(
                uid=uid,
                group_id=group_id,
                index=index,
                prompt_ids=p,
                response_ids=r,
                rollout_logprobs=lp,
                loss_mask=m,
                reward=reward,
                status=Status(status),
                label=label,
                metadata=metadata,
                weight_spans=[tuple(span) for span in spans],
                created_version=created_version,
                reward_info=reward_info,
            )
            for (
                uid,
                index,
                _,
                _,
                reward,
                status,
                label,
                metadata,
                spans,
                created_version,
                reward_info,
            ), p, r, lp, m in rows
        ]
        return Group(group_id=group_id, samples=samples)
    except (TypeError, ValueError) as err:
        raise DataError(f"group {group_id}: a sample record is garbled ({err})") from err
