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

TLS context: httpx builds a new one (loading the CA bundle) for every client, about 20 ms each, which
dominated short-lived clients such as a weight publish's; every client here shares `shared_ssl_context`.

Connection pools: httpcore's pool scans every connection of a pool on each request start and end (and
counts idle connections once per idle connection), so one pool serving a few hundred concurrent
requests spends more CPU on bookkeeping than on the requests. Requests therefore lease the least busy
of several small pools (`POOL_CONNECTIONS` requests each), opened on demand. With about 100 requests in
flight (benchmarks/april.py, same engine, two runs per size), pools of 16, 8, 4 and 2 gave 6,470, 6,980,
7,360 and 7,510 generated tokens/s without APRIL and 8,900, 9,380, 9,610 and 9,870 with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from slime_rl.engines.protocol import EngineLoad, GenerateOutput, GenerateRequest
from slime_rl.errors import ServiceError

logger = logging.getLogger(__name__)

_RETRY_STATUS = (502, 503, 504)
_RETRY_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)
POOL_CONNECTIONS = 4  # concurrent requests per httpx pool before another pool is opened
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
    """httpx's default verifying TLS context, built once per process."""
    return httpx.create_ssl_context()


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


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        for key in ("message", "detail"):
            if key in body:
                return str(body[key])
    return str(body)


def _parse_json(where: str, text: str, parse: Callable[[Any], T]) -> T:
    """`parse(json.loads(text))`; a body that is not JSON or not the shape `parse` reads raises EngineError."""
    try:
        return parse(json.loads(text))
    except _MALFORMED as err:
        raise EngineError(f"{where}: malformed response ({type(err).__name__}: {err}); body: {text[:200]!r}") from err


def _control_result(body: Any) -> tuple[bool, str]:
    return bool(body.get("success", False)), str(body.get("message", ""))


def _stream_chunk(body: Any) -> GenerateOutput | str:
    """One streamed event: the output so far, or the server's error message (SGLang sends errors in-band)."""
    if "error" in body:
        return str(body["error"].get("message"))
    return GenerateOutput.from_json(body)


class EngineClient:
    """Client for the engine (or router) at `base_url`, e.g. `http://127.0.0.1:30000`.

    Use as `async with EngineClient(url) as client:` or call `aclose()`. All methods are coroutines.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 600.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,  # tests pass an in-process transport
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._transport = transport
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._pools: list[httpx.AsyncClient] = []
        self._in_flight: list[int] = []  # requests in flight per pool
        # Profiling (slime_rl/profiling/lifecycles.py reads it): when a list, every `generate` appends one
        # `REQUEST_RECORD` tuple. A tuple append and two clock reads per request; None costs one test.
        self.lifecycles: list[tuple] | None = None

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        pools, self._pools, self._in_flight = self._pools, [], []
        for pool in pools:
            await pool.aclose()

    @contextlib.contextmanager
    def _client(self) -> Iterator[httpx.AsyncClient]:
        """Lease the pool with the fewest requests in flight; open another when all hold `POOL_CONNECTIONS`.

        A caller-supplied transport owns its connections, so it gets exactly one pool.
        """
        index = min(range(len(self._pools)), key=self._in_flight.__getitem__, default=-1)
        if index < 0 or (self._in_flight[index] >= POOL_CONNECTIONS and self._transport is None):
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=POOL_CONNECTIONS)
            self._pools.append(
                httpx.AsyncClient(
                    base_url=self.base_url,
                    timeout=self.timeout_s,
                    limits=limits,
                    transport=self._transport,
                    verify=shared_ssl_context(),
                )
            )
            self._in_flight.append(0)
            index = len(self._pools) - 1
        pool = self._pools[index]
        self._in_flight[index] += 1
        try:
            yield pool
        finally:
            if index < len(self._pools) and self._pools[index] is pool:  # aclose() may have run meanwhile
                self._in_flight[index] -= 1

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, retry: bool = True, ok_400: bool = False
    ) -> httpx.Response:
        """Send one request, retrying transient failures; raise `EngineError` on an error status."""
        attempts = 1 + (self.max_retries if retry else 0)
        for attempt in range(attempts):
            try:
                with self._client() as client:
                    response = await client.request(method, path, json=body)
            except _RETRY_ERRORS as err:
                if attempt + 1 >= attempts:
                    raise EngineError(
                        f"{method} {self.base_url}{path}: no answer after {attempts} tries: {err!r}"
                    ) from err
                logger.warning(
                    "%s %s%s failed (%r); retry %d/%d", method, self.base_url, path, err, attempt + 1, attempts - 1
                )
            except httpx.HTTPError as err:
                raise EngineError(f"{method} {self.base_url}{path} failed: {err!r}") from err
            else:
                if response.status_code in _RETRY_STATUS and attempt + 1 < attempts:
                    logger.warning("%s %s%s -> %d; retrying", method, self.base_url, path, response.status_code)
                elif response.is_success or (ok_400 and response.status_code == 400):
                    return response
                else:
                    detail = _error_message(response)
                    raise EngineError(
                        f"{method} {self.base_url}{path} -> HTTP {response.status_code}: {detail}",
                        status_code=response.status_code,
                        detail=detail,
                    )
            await asyncio.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    async def _control(self, path: str, body: dict[str, Any], *, retry: bool = True) -> str:
        """POST a control call answering `{"success", "message"}`; raise unless it succeeded."""
        response = await self._request("POST", path, body, retry=retry, ok_400=True)
        success, message = _parse_json(f"POST {self.base_url}{path}", response.text, _control_result)
        if not success:
            raise EngineError(f"POST {self.base_url}{path} failed: {message}", status_code=400)
        return message

    # -- generation ---------------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> GenerateOutput:
        """Generate for one sequence; an aborted request returns normally with finish_reason `abort`."""
        sent = time.time()
        response = await self._request("POST", "/generate", request.to_json())
        output = _parse_json(f"POST {self.base_url}/generate", response.text, GenerateOutput.from_json)
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
        path = "/generate"
        try:
            with self._client() as client:
                async with client.stream("POST", path, json=request.to_json(stream=True)) as response:
                    if not response.is_success:
                        await response.aread()
                        detail = _error_message(response)
                        raise EngineError(
                            f"POST {self.base_url}{path} -> HTTP {response.status_code}: {detail}",
                            status_code=response.status_code,
                            detail=detail,
                        )
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[len("data:") :].strip()
                        if data == "[DONE]":
                            return
                        chunk = _parse_json(f"POST {self.base_url}{path}", data, _stream_chunk)
                        if isinstance(chunk, str):
                            raise EngineError(f"POST {self.base_url}{path} stream error: {chunk}")
                        yield chunk
        except httpx.HTTPError as err:
            raise EngineError(f"POST {self.base_url}{path} stream failed: {err!r}") from err

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
    ) -> str:
        """Receive tensors (HF names, dtype strings like "bfloat16") broadcast from rank 0 in `names` order.

        Collective: the caller broadcasts each tensor while this call is in flight; it returns after the
        engine has loaded them and set `weight_version`.
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
        response = await self._request("GET", "/get_weight_version")
        return _parse_json(
            f"GET {self.base_url}/get_weight_version", response.text, lambda body: str(body["weight_version"])
        )

    async def update_weight_version(self, new_version: str) -> str:
        return await self._control("/update_weight_version", {"new_version": str(new_version)})

    # -- status -------------------------------------------------------------------------------------

    async def health(self) -> bool:
        """True when the server answers `/health` with 200; never raises, never retries."""
        try:
            with self._client() as client:
                response = await client.get("/health", timeout=min(self.timeout_s, 10.0))
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def get_model_info(self) -> ModelInfo:
        response = await self._request("GET", "/get_model_info")
        return _parse_json(
            f"GET {self.base_url}/get_model_info",
            response.text,
            lambda body: ModelInfo(
                model_path=str(body["model_path"]),
                tokenizer_path=body.get("tokenizer_path"),
                is_generation=bool(body.get("is_generation", True)),
                weight_version=str(body.get("weight_version", "default")),
            ),
        )

    async def get_server_info(self) -> dict[str, Any]:
        """The server's arguments and internal state. Open-ended by design (SGLang dumps its ServerArgs)."""
        response = await self._request("GET", "/get_server_info")
        return _parse_json(f"GET {self.base_url}/get_server_info", response.text, lambda body: {**body})

    async def get_loads(self) -> EngineLoad:
        response = await self._request("GET", "/v1/loads")
        return _parse_json(f"GET {self.base_url}/v1/loads", response.text, EngineLoad.from_json)

    async def flush_cache(self) -> bool:
        """Drop cached prefixes; False when the server refused because requests are running."""
        response = await self._request("POST", "/flush_cache", ok_400=True)
        return response.status_code == 200

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
        response = await self._request("POST", "/start_profile", body, retry=False)
        return response.text.strip()

    async def stop_profile(self) -> str:
        """Stop the profile and write its trace (SGLang's `/stop_profile`); returns the server's answer.

        Raises EngineError when none is running (also after a `num_steps` profile has ended by itself).
        """
        response = await self._request("POST", "/stop_profile", retry=False)
        return response.text.strip()
