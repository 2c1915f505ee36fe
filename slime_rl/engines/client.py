"""Async client for one SGLang-protocol server (SGLang itself, the native engine, or the router).

Owns transport concerns: timeouts, bounded retries with exponential backoff, and turning failures into
`EngineError`s that name the URL and endpoint. One method per endpoint, named after it. It does not
schedule requests across engines (the router does) and does not know about samples or rewards.

Retries: only failures where the request cannot have taken effect, or the server said "try again"
(connection refused or reset before a response, HTTP 502/503/504), are retried. Collective calls
(`init_weights_update_group`, `update_weights_from_distributed`) are never retried: the other ranks
are already inside the collective. Neither are the session calls (`begin_weight_update`,
`end_weight_update`): a call whose answer was lost has taken effect, and its retry would fail ("already
open", "none open").

Transport: aiohttp, one `ClientSession` per client with an unbounded keep-alive pool, opened on first use
inside the event loop that uses it (a session belongs to its loop). The rollout worker sends every
`/generate` through here, so its cost per request bounds the requests/s one worker sustains:
benchmarks/rollout_scale.py measured httpx at 2,283 us of CPU per request against 301 us for aiohttp on
the same requests (its `http_client` figures), which is why this client is on aiohttp.
Timeouts follow the old httpx semantics: `timeout_s` bounds connecting and each wait for bytes (a
non-streamed generation sends nothing until it ends), not the whole call.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import certifi

from slime_rl.engines.protocol import EngineLoad, GenerateOutput, GenerateRequest
from slime_rl.errors import ServiceError

logger = logging.getLogger(__name__)

_RETRY_STATUS = (502, 503, 504)
# No answer came, and the request cannot have been served: refused, reset or closed before a response, or
# the connection not made in time. A read timeout (SocketTimeoutError) is not among them: the server has it.
_RETRY_ERRORS = (
    aiohttp.ClientOSError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientConnectionResetError,
    aiohttp.ConnectionTimeoutError,
)
# What parsing a body that is not JSON, or not the shape expected, raises (json, dict/list access, int()).
_MALFORMED = (ValueError, KeyError, TypeError, IndexError, AttributeError)
T = TypeVar("T")
# One `generate` call as `EngineClient.lifecycles` records it (wall-clock seconds, time.time()); the last three
# come from the engine's meta_info (None when it does not report them).
REQUEST_RECORD = (
    "rid",
    "sent_s",
    "answered_s",
    "prompt_tokens",
    "completion_tokens",
    "finish",
    "weight_version",
    "engine_e2e_s",
    "engine_queue_s",
    "engine_ttft_s",
)


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """A verifying TLS context over certifi's CA bundle, built once per process (loading the bundle costs
    about 20 ms, which dominated short-lived clients such as a weight publish's)."""
    return ssl.create_default_context(cafile=certifi.where())


class EngineError(ServiceError):
    """An engine call failed: HTTP error status, `success: false`, a malformed answer, or none after the retries.

    `status_code` is the HTTP status when the server answered (None when it did not) and `detail` the
    server's own error message, when it sent one.
    """

    def __init__(self, message: str, *, status_code: int | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail

    @property
    def is_bad_request(self) -> bool:
        """True when the server refused the request itself (HTTP 4xx), so sending it again cannot succeed.

        408 (timeout) and 429 (too many requests) are 4xx that mean "try again later", not a bad request.
        """
        return self.status_code is not None and 400 <= self.status_code < 500 and self.status_code not in (408, 429)


@dataclass(slots=True, kw_only=True)
class ModelInfo:
    """`/get_model_info`: what the server serves."""

    model_path: str
    tokenizer_path: str | None
    is_generation: bool
    weight_version: str


@dataclass(slots=True)
class Reply:
    """An HTTP answer, read whole: its status and body."""

    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


def _error_message(text: str) -> str:
    """The server's own error message in an error body (SGLang's `{"error": {"message"}}`, FastAPI's `detail`)."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        for key in ("message", "detail"):
            if key in body:
                return str(body[key])
    return str(body)


def _parse_json(where: str, text: str | bytes, parse: Callable[[Any], T]) -> T:
    """`parse(json.loads(text))`; a body that is not JSON or not the shape `parse` reads raises EngineError."""
    try:
        return parse(json.loads(text))
    except _MALFORMED as err:
        shown = text if isinstance(text, str) else text.decode("utf-8", errors="replace")
        raise EngineError(f"{where}: malformed response ({type(err).__name__}: {err}); body: {shown[:200]!r}") from err


def _control_result(body: Any) -> tuple[bool, str]:
    return bool(body.get("success", False)), str(body.get("message", ""))


def _stream_chunk(body: Any) -> GenerateOutput | str:
    """One streamed event: the output so far, or the server's error message (SGLang sends errors in-band)."""
    if "error" in body:
        return str(body["error"].get("message"))
    return GenerateOutput.from_json(body)


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The body's lines as they arrive, however long (a streamed chunk repeats the whole output so far, so a
    long response's lines outgrow aiohttp's `readline` limit)."""
    pending = b""
    async for data in stream.iter_any():
        pending += data
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line
    if pending:
        yield pending


class EngineClient:
    """Client for the engine (or router) at `base_url`, e.g. `http://127.0.0.1:30000`.

    Use as `async with EngineClient(url) as client:` or call `aclose()`. All methods are coroutines, and all
    calls on one client must come from one event loop (the one its first call ran in).
    """

    def __init__(
        self, base_url: str, *, timeout_s: float = 600.0, max_retries: int = 3, backoff_s: float = 0.5
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._session: aiohttp.ClientSession | None = None
        # Profiling (slime_rl/profiling/lifecycles.py reads it): when a list, every `generate` appends one
        # `REQUEST_RECORD` tuple. A tuple append and two clock reads per request; None costs one test.
        self.lifecycles: list[tuple] | None = None

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        """The session, opened on first use (aiohttp binds it to the running loop, so not in __init__)."""
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s)
            connector = aiohttp.TCPConnector(limit=0, ssl=shared_ssl_context())
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, retry: bool = True, ok_400: bool = False
    ) -> Reply:
        """Send one request, retrying transient failures; raise `EngineError` on an error status."""
        url = self.base_url + path
        attempts = 1 + (self.max_retries if retry else 0)
        for attempt in range(attempts):
            try:
                async with self._client().request(method, url, json=body) as response:
                    reply = Reply(response.status, await response.read())
            except _RETRY_ERRORS as err:
                if attempt + 1 >= attempts:
                    raise EngineError(f"{method} {url}: no answer after {attempts} tries: {err!r}") from err
                logger.warning("%s %s failed (%r); retry %d/%d", method, url, err, attempt + 1, attempts - 1)
            except (aiohttp.ClientError, TimeoutError) as err:
                raise EngineError(f"{method} {url} failed: {err!r}") from err
            else:
                if reply.status in _RETRY_STATUS and attempt + 1 < attempts:
                    logger.warning("%s %s -> %d; retrying", method, url, reply.status)
                elif reply.is_success or (ok_400 and reply.status == 400):
                    return reply
                else:
                    detail = _error_message(reply.text)
                    raise EngineError(
                        f"{method} {url} -> HTTP {reply.status}: {detail}", status_code=reply.status, detail=detail
                    )
            await asyncio.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    async def _control(self, path: str, body: dict[str, Any], *, retry: bool = True) -> str:
        """POST a control call answering `{"success", "message"}`; raise unless it succeeded."""
        reply = await self._request("POST", path, body, retry=retry, ok_400=True)
        success, message = _parse_json(f"POST {self.base_url}{path}", reply.body, _control_result)
        if not success:
            raise EngineError(f"POST {self.base_url}{path} failed: {message}", status_code=400)
        return message

    # -- generation ---------------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> GenerateOutput:
        """Generate for one sequence; an aborted request returns normally with finish_reason `abort`."""
        sent = time.time()
        reply = await self._request("POST", "/generate", request.to_json())
        output = _parse_json(f"POST {self.base_url}/generate", reply.body, GenerateOutput.from_json)
        if self.lifecycles is not None:
            finish = output.finish_reason.type if output.finish_reason else "none"
            self.lifecycles.append(
                (
                    output.rid,
                    sent,
                    time.time(),
                    output.prompt_tokens,
                    len(output.output_ids),
                    finish,
                    output.weight_version,
                    output.e2e_latency_s,
                    output.queue_time_s,
                    output.first_token_latency_s,
                )
            )
        return output

    async def generate_stream(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        """Yield cumulative outputs as tokens arrive; the last one has a `finish_reason`. Not retried."""
        url = f"{self.base_url}/generate"
        try:
            async with self._client().post(url, json=request.to_json(stream=True)) as response:
                if response.status >= 300:
                    detail = _error_message((await response.read()).decode("utf-8", errors="replace"))
                    raise EngineError(
                        f"POST {url} -> HTTP {response.status}: {detail}", status_code=response.status, detail=detail
                    )
                async for line in _lines(response.content):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[len(b"data:") :].strip()
                    if data == b"[DONE]":
                        return
                    chunk = _parse_json(f"POST {url}", data, _stream_chunk)
                    if isinstance(chunk, str):
                        raise EngineError(f"POST {url} stream error: {chunk}")
                    yield chunk
        except (aiohttp.ClientError, TimeoutError) as err:
            raise EngineError(f"POST {url} stream failed: {err!r}") from err

    async def abort_request(self, rid: str) -> None:
        """Abort every running or waiting request whose rid starts with `rid`."""
        await self._request("POST", "/abort_request", {"rid": rid})

    async def abort_all(self) -> None:
        """Abort every request; each returns its partial output with finish_reason `abort`."""
        await self._request("POST", "/abort_request", {"rid": "", "abort_all": True})

    async def pause_generation(self, mode: str = "abort") -> None:
        """Stop scheduling: `abort` ends in-flight requests, `retract`/`in_place` keep them for `continue`."""
        await self._request("POST", "/pause_generation", {"mode": mode})

    async def continue_generation(self) -> None:
        await self._request("POST", "/continue_generation", {})

    # -- weights ------------------------------------------------------------------------------------

    async def update_weights_from_disk(
        self, model_path: str, weight_version: str | None = None, load_format: str | None = None
    ) -> str:
        """Load HF safetensors weights from `model_path` in place; returns the server's message."""
        body: dict[str, Any] = {"model_path": model_path}
        if weight_version is not None:
            body["weight_version"] = str(weight_version)
        if load_format is not None:
            body["load_format"] = load_format
        return await self._control("/update_weights_from_disk", body)

    async def init_weights_update_group(
        self,
        *,
        master_address: str,
        master_port: int,
        rank_offset: int,
        world_size: int,
        group_name: str = "weight_update_group",
        backend: str = "gloo",
    ) -> str:
        """Make the engine join a weight-update group (trainer = rank 0, TCPStore master). Collective: the
        caller must build its own side of the group while this call is in flight."""
        body = {
            "master_address": master_address,
            "master_port": master_port,
            "rank_offset": rank_offset,
            "world_size": world_size,
            "group_name": group_name,
            "backend": backend,
        }
        return await self._control("/init_weights_update_group", body, retry=False)

    async def update_weights_from_distributed(
        self,
        *,
        names: list[str],
        dtypes: list[str],
        shapes: list[list[int]],
        group_name: str = "weight_update_group",
        weight_version: str | None = None,
        flush_cache: bool = True,
        load_format: str | None = None,
    ) -> str:
        """Receive tensors (HF names, dtype strings like "bfloat16") broadcast from rank 0 in `names` order.

        Collective: the caller broadcasts each tensor while this call is in flight (with
        `load_format="flattened_bucket"`, all of them as one byte buffer: engines/tensor_bucket.py); it
        returns after the engine has loaded them and set `weight_version`.
        """
        if not len(names) == len(dtypes) == len(shapes):
            raise ValueError(
                f"names ({len(names)}), dtypes ({len(dtypes)}) and shapes ({len(shapes)}) differ in length"
            )
        body: dict[str, Any] = {
            "names": list(names),
            "dtypes": list(dtypes),
            "shapes": [list(s) for s in shapes],
            "group_name": group_name,
            "flush_cache": flush_cache,
        }
        if weight_version is not None:
            body["weight_version"] = str(weight_version)
        if load_format is not None:
            body["load_format"] = load_format
        return await self._control("/update_weights_from_distributed", body, retry=False)

    async def destroy_weights_update_group(self, group_name: str = "weight_update_group") -> str:
        return await self._control("/destroy_weights_update_group", {"group_name": group_name})

    async def begin_weight_update(self, selector: str = "all") -> str:
        """Open a weight-update session (SGLang 0.5.23+; older servers answer 404): SGLang refuses
        `update_weights_from_distributed` outside one, and a second `begin` before `end_weight_update`.
        `selector`: the model runners it covers, `target`, `draft` or `all`."""
        return await self._control("/begin_weight_update", {"selector": selector}, retry=False)

    async def end_weight_update(self) -> str:
        """Close the session `begin_weight_update` opened; the server finalizes the loaded weights."""
        return await self._control("/end_weight_update", {}, retry=False)

    async def get_weight_version(self) -> str:
        reply = await self._request("GET", "/get_weight_version")
        return _parse_json(
            f"GET {self.base_url}/get_weight_version", reply.body, lambda body: str(body["weight_version"])
        )

    async def update_weight_version(self, new_version: str) -> str:
        return await self._control("/update_weight_version", {"new_version": str(new_version)})

    # -- status -------------------------------------------------------------------------------------

    async def health(self) -> bool:
        """True when the server answers `/health` with 200 within 10 s; never raises, never retries."""
        timeout = aiohttp.ClientTimeout(total=min(self.timeout_s, 10.0))
        try:
            async with self._client().get(f"{self.base_url}/health", timeout=timeout) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def get_model_info(self) -> ModelInfo:
        reply = await self._request("GET", "/get_model_info")
        return _parse_json(
            f"GET {self.base_url}/get_model_info",
            reply.body,
            lambda body: ModelInfo(
                model_path=str(body["model_path"]),
                tokenizer_path=body.get("tokenizer_path"),
                is_generation=bool(body.get("is_generation", True)),
                weight_version=str(body.get("weight_version", "default")),
            ),
        )

    async def get_server_info(self) -> dict[str, Any]:
        """The server's arguments and internal state. Open-ended by design (SGLang dumps its ServerArgs)."""
        reply = await self._request("GET", "/get_server_info")
        return _parse_json(f"GET {self.base_url}/get_server_info", reply.body, lambda body: {**body})

    async def get_loads(self) -> EngineLoad:
        reply = await self._request("GET", "/v1/loads")
        return _parse_json(f"GET {self.base_url}/v1/loads", reply.body, EngineLoad.from_json)

    async def flush_cache(self) -> bool:
        """Drop cached prefixes; False when the server refused because requests are running."""
        reply = await self._request("POST", "/flush_cache", ok_400=True)
        return reply.status == 200

    # -- profiling ----------------------------------------------------------------------------------

    async def start_profile(
        self,
        output_dir: str | None = None,
        num_steps: int | None = None,
        activities: list[str] | None = None,
        *,
        with_stack: bool | None = None,
        record_shapes: bool | None = None,
        profile_by_stage: bool = False,
    ) -> str:
        """Start a torch profile on the server (SGLang's `/start_profile`); returns its answer, "Start profiling.".

        The trace goes to `output_dir` on the server's machine (None = the server's default) after `num_steps`
        model steps, or at `stop_profile` when None. Not retried: a start whose answer was lost has begun, and a
        second start is refused. A refusal (already profiling) raises EngineError (SGLang answers HTTP 500).
        """
        body = {
            "output_dir": output_dir,
            "num_steps": num_steps,
            "activities": activities,
            "with_stack": with_stack,
            "record_shapes": record_shapes,
            "profile_by_stage": profile_by_stage,
        }
        body = {key: value for key, value in body.items() if value is not None}
        reply = await self._request("POST", "/start_profile", body, retry=False)
        return reply.text.strip()

    async def stop_profile(self) -> str:
        """Stop the profile and write its trace (SGLang's `/stop_profile`); returns the server's answer.

        Raises EngineError when none is running (also after a `num_steps` profile has ended by itself).
        """
        reply = await self._request("POST", "/stop_profile", retry=False)
        return reply.text.strip()
