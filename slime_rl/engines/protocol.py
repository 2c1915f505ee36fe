"""Typed request and response records of the SGLang HTTP protocol (the subset RL needs).

Owns the JSON shapes both sides agree on: `to_json` builds a request body exactly as SGLang's
`GenerateReqInput` expects, `from_json` parses a `/generate` response (or one streamed chunk). It does
no I/O; the client and the native server both use it. Field names follow SGLang (REFERENCE.md §1).

Weight versions are strings on the wire, as in SGLang (`"default"` until the first update); callers
that count versions with integers send `str(version)` and parse with `int()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FINISH_TYPES = ("stop", "length", "abort")


@dataclass(slots=True, kw_only=True)
class SamplingParams:
    """Per-request sampling settings. `temperature` < 1e-6 means greedy; `top_k` = -1 means all tokens."""

    max_new_tokens: int = 128  # tokens to generate at most
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_new_tokens: int = 0  # EOS and stop tokens are ignored before this many tokens
    stop_token_ids: list[int] | None = None  # extra token ids that end generation (besides EOS)
    ignore_eos: bool = False
    sampling_seed: int | None = None  # per-request seed; None = engine's own generator
    skip_special_tokens: bool = True  # detokenisation only

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (all) or >= 1, got {self.top_k}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_new_tokens": self.min_new_tokens,
            "ignore_eos": self.ignore_eos,
            "skip_special_tokens": self.skip_special_tokens,
        }
        if self.stop_token_ids:
            body["stop_token_ids"] = list(self.stop_token_ids)
        if self.sampling_seed is not None:
            body["sampling_seed"] = self.sampling_seed
        return body


@dataclass(slots=True, kw_only=True)
class GenerateRequest:
    """One `/generate` call for a single sequence. Exactly one of `input_ids` and `text` is set."""

    input_ids: list[int] | None = None
    text: str | None = None
    sampling_params: SamplingParams = field(default_factory=SamplingParams)
    rid: str | None = None  # request id; abort matches it by prefix, so use uuids
    return_logprob: bool = True  # ask for `output_token_logprobs`

    def __post_init__(self) -> None:
        if (self.input_ids is None) == (self.text is None):
            raise ValueError("GenerateRequest needs exactly one of input_ids and text")

    def to_json(self, *, stream: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "sampling_params": self.sampling_params.to_json(),
            "return_logprob": self.return_logprob,
            "stream": stream,
        }
        if self.input_ids is not None:
            body["input_ids"] = [int(t) for t in self.input_ids]
        else:
            body["text"] = self.text
        if self.rid is not None:
            body["rid"] = self.rid
        return body


@dataclass(slots=True, kw_only=True)
class FinishReason:
    """Why generation ended: `stop` (EOS or a stop token, `matched`), `length` (`length`), `abort` (`message`)."""

    type: str  # stop | length | abort
    matched: int | str | None = None
    length: int | None = None
    message: str | None = None

    def __post_init__(self) -> None:
        if self.type not in FINISH_TYPES:
            raise ValueError(f"finish_reason.type must be one of {FINISH_TYPES}, got {self.type!r}")

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type}
        if self.type == "stop":
            body["matched"] = self.matched
        elif self.type == "length":
            body["length"] = self.length
        else:
            body["message"] = self.message or ""
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FinishReason:
        return cls(
            type=body["type"], matched=body.get("matched"), length=body.get("length"), message=body.get("message")
        )


@dataclass(slots=True, kw_only=True)
class GenerateOutput:
    """A `/generate` response (or a cumulative stream chunk) for one sequence.

    `output_ids` and `output_logprobs` line up one-to-one (empty logprobs if none were asked for).
    `finish_reason` is None only for a stream chunk of an unfinished request.
    """

    rid: str
    text: str
    output_ids: list[int]
    output_logprobs: list[float]  # log-prob of each sampled token (see native/sampling.py for the definition)
    finish_reason: FinishReason | None
    prompt_tokens: int
    weight_version: str
    e2e_latency_s: float = 0.0
    queue_time_s: float | None = None  # meta_info `queue_time`: SGLang with --enable-metrics; None if not reported
    first_token_latency_s: float | None = None  # meta_info `first_token_latency`, same condition

    def __post_init__(self) -> None:
        if self.output_logprobs and len(self.output_logprobs) != len(self.output_ids):
            raise ValueError(
                f"request {self.rid}: {len(self.output_logprobs)} logprobs for {len(self.output_ids)} output tokens"
            )

    @property
    def completion_tokens(self) -> int:
        return len(self.output_ids)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> GenerateOutput:
        meta = body["meta_info"]
        token_logprobs = meta.get("output_token_logprobs") or []
        finish = meta.get("finish_reason")
        return cls(
            rid=meta["id"],
            text=body.get("text", ""),
            output_ids=[int(t) for t in body["output_ids"]],
            output_logprobs=[float(entry[0]) for entry in token_logprobs],
            finish_reason=FinishReason.from_json(finish) if finish else None,
            prompt_tokens=int(meta["prompt_tokens"]),
            weight_version=str(meta.get("weight_version", "default")),
            e2e_latency_s=float(meta.get("e2e_latency", 0.0)),
            queue_time_s=float(meta["queue_time"]) if meta.get("queue_time") is not None else None,
            first_token_latency_s=(
                float(meta["first_token_latency"]) if meta.get("first_token_latency") is not None else None
            ),
        )


@dataclass(slots=True, kw_only=True)
class EngineLoad:
    """Queue sizes from `/v1/loads`, summed over data-parallel ranks."""

    num_running_reqs: int
    num_waiting_reqs: int
    num_used_tokens: int = 0

    @property
    def num_reqs(self) -> int:
        return self.num_running_reqs + self.num_waiting_reqs

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> EngineLoad:
        ranks = body.get("loads") or []
        return cls(
            num_running_reqs=sum(int(r.get("num_running_reqs", 0)) for r in ranks),
            num_waiting_reqs=sum(int(r.get("num_waiting_reqs", 0)) for r in ranks),
            num_used_tokens=sum(int(r.get("num_used_tokens", 0)) for r in ranks),
        )


def served_context_len(server_info: dict[str, Any]) -> int | None:
    """Tokens per sequence (prompt + response) a `/get_server_info` body says the server accepts.

    The native engine reports `max_context_len`; SGLang reports its `context_length` argument, which is None
    unless set, in which case it serves the model's own limit (and this returns None).
    """
    for key in ("max_context_len", "context_length"):
        if server_info.get(key) is not None:
            return int(server_info[key])
    return None


def weight_update_ranks(server_info: dict[str, Any]) -> int:
    """Ranks a server joins a weight-update group with, from its `/get_server_info` body.

    SGLang joins with one rank per tensor-parallel rank (`rank_offset + tp_rank`), so its `tp_size`; a
    server that does not report one is one rank.
    """
    return int(server_info.get("tp_size") or 1)
