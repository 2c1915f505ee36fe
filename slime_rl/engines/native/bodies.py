"""Request bodies of the native engine: size-limited reading, strict JSON types, and `/generate` parsing.

Owns every check a request passes before it reaches the scheduler, so that no malformed body can fail
later on the model thread (where an error aborts every running request) or as an HTTP 500. Anything
wrong raises `BadRequest`, which app.py answers with HTTP 400 `{"error": {"message"}}`; messages name
the field. It does no I/O beyond reading the body and knows nothing about routes.

Limits SGLang does not have: bodies over `MAX_BODY_BYTES` and `/generate` batches over `MAX_BATCH_SIZE`
sequences are refused. NaN, Infinity and numbers that overflow a float are refused (Python's json
accepts them; SGLang's SamplingParams.verify refuses a non-finite temperature). Token ids must lie in
[0, vocab size), as in SGLang's `_validate_input_ids_in_vocab` (which checks only the upper bound; a
negative id would index the embedding from its end here).

Unknown `sampling_params` keys: SGLang builds `SamplingParams(**sampling_params)`, so a key it does not
know raises TypeError, which its HTTP server (catching ValueError only) answers with HTTP 500. This engine
refuses the same keys with 400. Keys SGLang knows but this engine does not implement (stop strings,
penalties, grammars, ...) are accepted and ignored, as before. Unknown top-level keys are ignored, as
SGLang's `GenerateReqInput` dataclass does.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from typing import Any

from starlette.requests import Request

from slime_rl.engines.native.profiler import ACTIVITIES, ProfileRequest
from slime_rl.engines.native.requests import context_error
from slime_rl.engines.protocol import SamplingParams

MAX_BODY_BYTES = 8 << 20  # a full-context batch of MAX_BATCH_SIZE short prompts is well below this
MAX_BATCH_SIZE = 1024  # sequences per /generate call; callers with more send several calls
_INT64 = (-(1 << 63), (1 << 63) - 1)  # ints reach torch int64 tensors on the model thread

# SGLang's SamplingParams API fields (python/sglang/srt/sampling/sampling_params.py).
SGLANG_SAMPLING_KEYS = frozenset(
    {
        "max_new_tokens", "stop", "stop_token_ids", "stop_regex", "temperature", "top_p", "top_k", "min_p",
        "frequency_penalty", "presence_penalty", "repetition_penalty", "min_new_tokens", "n", "json_schema",
        "regex", "ebnf", "structural_tag", "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens",
        "no_stop_trim", "custom_params", "stream_interval", "logit_bias", "sampling_seed",
    }
)  # fmt: skip
# The SamplingParams fields this engine implements and their JSON types (stop_token_ids is checked apart).
_SAMPLING_TYPES: dict[str, type] = {
    "max_new_tokens": int,
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_new_tokens": int,
    "ignore_eos": bool,
    "sampling_seed": int,
    "skip_special_tokens": bool,
}
_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number"}
_JSON_NAMES |= {bool: "a boolean", type(None): "null"}
_REQUIRED = object()


class BadRequest(ValueError):
    """The request body is malformed; answered with HTTP 400."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"number {text} overflows a float")
    return value


def _no_constant(name: str) -> None:
    raise BadRequest(f"{name} is not a number")


async def read_json(request: Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The body as a JSON object, read at most `MAX_BODY_BYTES` far; an empty body is `{}` if `allow_empty`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(f"request body of {declared} bytes exceeds the limit of {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(f"request body exceeds the limit of {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if allow_empty and not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError as err:
        raise BadRequest("request body is nested too deeply") from err
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, BadRequest, too many int digits
        raise BadRequest(f"request body is not valid JSON: {err}") from err
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, got {json_type(body)}")
    return body


def json_type(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def check(value: Any, kind: type, name: str) -> Any:
    """`value` as JSON type `kind` (an int is also a float, a bool is not an int); ints must fit int64."""
    if isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool):
        if kind is int and not _INT64[0] <= value <= _INT64[1]:
            raise BadRequest(f"{name} is out of range: {value}")
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > 1e300:
            raise BadRequest(f"{name} is out of range: {value}")
        return float(value)
    raise BadRequest(f"{name} must be {_JSON_NAMES[kind]}, got {json_type(value)}")


def field(body: dict[str, Any], name: str, kind: type, default: Any = _REQUIRED) -> Any:
    """`body[name]` checked by `check`; null or absent gives `default` (BadRequest if there is none)."""
    value = body.get(name)
    if value is None:
        if default is _REQUIRED:
            raise BadRequest(f"{name} is required")
        return default
    return check(value, kind, name)


def token_ids(value: Any, name: str, vocab_size: int) -> list[int]:
    """A non-empty array of token ids in [0, vocab_size)."""
    if not isinstance(value, list) or not value:
        shown = "[]" if value == [] else json_type(value)
        raise BadRequest(f"{name} must be a non-empty array of token ids, got {shown}")
    for i, token in enumerate(value):
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab_size:
            shown = token if isinstance(token, int) else json_type(token)
            raise BadRequest(f"{name}[{i}] must be a token id in [0, {vocab_size}), got {shown}")
    return value


def sampling_params(value: Any, name: str, vocab_size: int) -> SamplingParams:
    """Parse one `sampling_params` object (null = defaults); keys SGLang does not know are refused."""
    if value is None:
        return SamplingParams()
    if not isinstance(value, dict):
        raise BadRequest(f"{name} must be an object, got {json_type(value)}")
    unknown = sorted(str(key) for key in value if key not in SGLANG_SAMPLING_KEYS)
    if unknown:
        raise BadRequest(f"{name} has unknown key {unknown[0]!r} (SGLang's SamplingParams does not accept it)")
    known = {k: check(value[k], kind, f"{name}.{k}") for k, kind in _SAMPLING_TYPES.items() if value.get(k) is not None}
    if value.get("stop_token_ids") is not None:
        known["stop_token_ids"] = token_ids(value["stop_token_ids"], f"{name}.stop_token_ids", vocab_size)
    try:
        return SamplingParams(**known)
    except ValueError as err:
        raise BadRequest(f"{name}: {err}") from err


def _per_item(body: dict[str, Any], name: str, count: int, is_batch: bool) -> list[Any]:
    """`body[name]` once per sequence: a batch may give an array of one entry per sequence."""
    value = body.get(name)
    if is_batch and isinstance(value, list):
        if len(value) != count:
            raise BadRequest(f"{name} has {len(value)} entries for a batch of {count}")
        return value
    return [value] * count


def _prompts(body: dict[str, Any], tokenizer, vocab_size: int) -> tuple[list[list[int]], bool]:
    """The prompts' token ids and whether the body is a batch."""
    has_ids, has_text = body.get("input_ids") is not None, body.get("text") is not None
    if has_ids == has_text:
        raise BadRequest("exactly one of input_ids and text must be given")
    name = "input_ids" if has_ids else "text"
    value = body[name]
    is_batch = isinstance(value, list) and (has_text or (bool(value) and isinstance(value[0], list)))
    if is_batch and not 1 <= len(value) <= MAX_BATCH_SIZE:
        raise BadRequest(f"a batch holds 1 to {MAX_BATCH_SIZE} sequences, got {len(value)}")
    entries = value if is_batch else [value]
    names = [f"{name}[{i}]" for i in range(len(entries))] if is_batch else [name]
    if has_ids:
        return [token_ids(ids, n, vocab_size) for ids, n in zip(entries, names, strict=True)], is_batch
    prompts = []
    for text, n in zip(entries, names, strict=True):
        ids = tokenizer(check(text, str, n))["input_ids"]
        if not ids:
            raise BadRequest(f"{n} has no tokens")
        prompts.append(token_ids(ids, n, vocab_size))
    return prompts, is_batch


def parse_generate(
    body: dict[str, Any], tokenizer, *, context_len: int, vocab_size: int
) -> tuple[list[dict[str, Any]], bool]:
    """Split a `/generate` body into per-sequence items; returns (items, is_batch).

    Raises BadRequest if any item is malformed or does not fit `context_len` (so a batch runs whole or
    not at all). An item that gives no `max_new_tokens` gets the default capped at what fits, as SGLang does.
    """
    prompts, is_batch = _prompts(body, tokenizer, vocab_size)
    count = len(prompts)
    rid = body.get("rid")
    if rid is None:
        rids = [uuid.uuid4().hex for _ in range(count)]
    elif is_batch and isinstance(rid, list):
        rids = [check(r, str, f"rid[{i}]") for i, r in enumerate(_per_item(body, "rid", count, is_batch))]
        if len(set(rids)) != count:
            raise BadRequest("rid has duplicate entries; rids must be unique")
    else:
        rid = check(rid, str, "rid")
        rids = [f"{rid}_{i}" for i in range(count)] if is_batch else [rid]
    sampling = _per_item(body, "sampling_params", count, is_batch)
    logprob = _per_item(body, "return_logprob", count, is_batch)
    items = []
    for i, (prompt, item_rid, params, return_logprob) in enumerate(zip(prompts, rids, sampling, logprob, strict=True)):
        suffix = f"[{i}]" if is_batch and isinstance(body.get("sampling_params"), list) else ""
        parsed = sampling_params(params, f"sampling_params{suffix}", vocab_size)
        if not isinstance(params, dict) or params.get("max_new_tokens") is None:
            parsed.max_new_tokens = max(0, min(parsed.max_new_tokens, context_len - len(prompt)))
        error = context_error(len(prompt), parsed.max_new_tokens, context_len)
        if error is not None:
            raise BadRequest(error)
        items.append(
            {
                "rid": item_rid,
                "input_ids": prompt,
                "params": parsed,
                "return_logprob": return_logprob is not None and check(return_logprob, bool, "return_logprob"),
            }
        )
    return items, is_batch


def parse_profile(body: dict[str, Any]) -> ProfileRequest:
    """A `/start_profile` body (SGLang's ProfileReq). Options this engine does not implement are refused when set:
    `start_step`, `profile_by_stage`, `profile_stages`, `detailed_annotations`, and activities other than CPU/GPU.
    `merge_profiles` is accepted: with one rank there is one trace. Unknown keys are ignored."""
    for name in ("start_step", "profile_stages"):
        if body.get(name) is not None:
            raise BadRequest(f"{name} is not supported by this engine; profiling starts at the next step")
    for name in ("profile_by_stage", "detailed_annotations"):
        if field(body, name, bool, False):
            raise BadRequest(f"{name}=true is not supported by this engine")
    field(body, "merge_profiles", bool, False)
    num_steps = field(body, "num_steps", int, None)
    if num_steps is not None and num_steps < 1:
        raise BadRequest(f"num_steps must be >= 1 or null, got {num_steps}")
    activities = [
        check(a, str, f"activities[{i}]") for i, a in enumerate(field(body, "activities", list, ["CPU", "GPU"]))
    ]
    unknown = sorted(set(activities) - set(ACTIVITIES))
    if unknown or not activities:
        raise BadRequest(f"activities must be a non-empty subset of {list(ACTIVITIES)}, got {activities}")
    return ProfileRequest(
        output_dir=field(body, "output_dir", str, None) or os.environ.get("SGLANG_TORCH_PROFILER_DIR", "/tmp"),
        num_steps=num_steps,
        activities=activities,
        with_stack=field(body, "with_stack", bool, True),  # SGLang records stacks and shapes unless told not to
        record_shapes=field(body, "record_shapes", bool, True),
        profile_id=field(body, "profile_id", str, None) or str(time.time()),
        profile_prefix=field(body, "profile_prefix", str, ""),
    )
