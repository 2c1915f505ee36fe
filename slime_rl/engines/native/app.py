"""HTTP layer of the native engine: SGLang's endpoints and JSON shapes (REFERENCE.md §1) over FastAPI.

Owns request parsing, validation (HTTP 400 `{"error": {"message"}}`), response assembly, detokenisation
and SSE streaming. Model work never runs on the event loop: requests go to the scheduler's model thread
and come back through `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from slime_rl.engines.native.engine import NativeEngine
from slime_rl.engines.native.scheduler import EngineRequest, RequestUpdate, context_error
from slime_rl.engines.protocol import SamplingParams

logger = logging.getLogger(__name__)
SERVER_VERSION = "slime-rl-native-0.1"


class BadRequest(ValueError):
    """The request body is malformed; answered with HTTP 400."""


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status)


def _control(success: bool, message: str) -> JSONResponse:
    return JSONResponse({"success": success, "message": message}, status_code=200 if success else 400)


def _per_item(value: Any, count: int, name: str, is_batch: bool) -> list[Any]:
    if is_batch and isinstance(value, list):
        if len(value) != count:
            raise BadRequest(f"{name} has {len(value)} entries for a batch of {count}")
        return value
    return [value] * count


def _parse_generate(body: dict[str, Any], tokenizer, context_len: int) -> tuple[list[dict[str, Any]], bool]:
    """Split a `/generate` body into per-sequence items; returns (items, is_batch).

    Raises BadRequest if any item does not fit `context_len` (so a batch runs whole or not at all). An item
    that gives no `max_new_tokens` gets the default capped at what fits, as SGLang does.
    """
    has_ids, has_text = body.get("input_ids") is not None, body.get("text") is not None
    if has_ids == has_text:
        raise BadRequest("exactly one of input_ids and text must be given")
    if has_ids:
        ids = body["input_ids"]
        is_batch = bool(ids) and isinstance(ids[0], list)
        prompts = ids if is_batch else [ids]
    else:
        text = body["text"]
        is_batch = isinstance(text, list)
        prompts = [tokenizer(t)["input_ids"] for t in (text if is_batch else [text])]
    count = len(prompts)
    rid = body.get("rid")
    if rid is None:
        rids = [uuid.uuid4().hex for _ in range(count)]
    elif isinstance(rid, list):
        rids = _per_item(rid, count, "rid", is_batch)
    else:
        rids = [f"{rid}_{i}" for i in range(count)] if is_batch else [str(rid)]
    sampling = _per_item(body.get("sampling_params"), count, "sampling_params", is_batch)
    return_logprob = _per_item(body.get("return_logprob", False), count, "return_logprob", is_batch)
    items = []
    for prompt, item_rid, params, logprob in zip(prompts, rids, sampling, return_logprob, strict=True):
        try:
            parsed = SamplingParams.from_json(params)
            tokens = [int(t) for t in prompt]
        except (TypeError, ValueError) as err:
            raise BadRequest(f"request {item_rid}: {err}") from err
        if not isinstance(params, dict) or params.get("max_new_tokens") is None:
            parsed.max_new_tokens = max(0, min(parsed.max_new_tokens, context_len - len(tokens)))
        error = context_error(len(tokens), parsed.max_new_tokens, context_len)
        if error is not None:
            raise BadRequest(error)
        items.append({"rid": str(item_rid), "input_ids": tokens, "params": parsed, "return_logprob": bool(logprob)})
    return items, is_batch


def _response(engine: NativeEngine, item: dict[str, Any], update: RequestUpdate, started: float) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "id": item["rid"],
        "finish_reason": update.finish_reason.to_json() if update.finish_reason else None,
        "prompt_tokens": len(item["input_ids"]),
        "completion_tokens": len(update.output_ids),
        "cached_tokens": 0,
        "weight_version": update.weight_version,
        "e2e_latency": time.monotonic() - started,
    }
    if item["return_logprob"]:
        meta["output_token_logprobs"] = [
            [lp, t, None] for lp, t in zip(update.logprobs, update.output_ids, strict=True)
        ]
        meta["input_token_logprobs"] = []
    skip = item["params"].skip_special_tokens
    text = engine.tokenizer.decode(update.output_ids, skip_special_tokens=skip)
    return {"text": text, "output_ids": update.output_ids, "meta_info": meta}


def build_app(engine: NativeEngine) -> FastAPI:
    """The FastAPI app serving `engine` (already started)."""
    app = FastAPI(title="slime-rl native engine")
    scheduler = engine.scheduler

    def submit(item: dict[str, Any], *, stream: bool) -> asyncio.Queue[RequestUpdate]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RequestUpdate] = asyncio.Queue()
        request = EngineRequest(
            rid=item["rid"],
            input_ids=item["input_ids"],
            params=item["params"],
            stream=stream,
            sink=lambda update: loop.call_soon_threadsafe(queue.put_nowait, update),
        )
        scheduler.submit(request)
        return queue

    async def final(queue: asyncio.Queue[RequestUpdate]) -> RequestUpdate:
        while True:
            update = await queue.get()
            if update.finish_reason is not None:
                return update

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        started = time.monotonic()
        try:
            body = await request.json()
            items, is_batch = _parse_generate(body, engine.tokenizer, engine.max_context_len)
            if body.get("stream") and is_batch:
                raise BadRequest("streaming supports one sequence per request")
            queues = [submit(item, stream=bool(body.get("stream"))) for item in items]
        except (BadRequest, ValueError) as err:
            return _error(str(err))
        if body.get("stream"):
            return StreamingResponse(_stream(items[0], queues[0], started), media_type="text/event-stream")
        updates = await asyncio.gather(*(final(q) for q in queues))
        outputs = [_response(engine, item, u, started) for item, u in zip(items, updates, strict=True)]
        return JSONResponse(outputs if is_batch else outputs[0])

    async def _stream(item: dict[str, Any], queue: asyncio.Queue[RequestUpdate], started: float) -> AsyncIterator[str]:
        finished = False
        try:
            while not finished:
                update = await queue.get()
                finished = update.finish_reason is not None
                yield f"data: {json.dumps(_response(engine, item, update, started))}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if not finished:  # the client went away: free the slot
                scheduler.abort(item["rid"])

    @app.post("/abort_request")
    async def abort_request(request: Request) -> Response:
        body = await request.json()
        prefix = None if body.get("abort_all") else str(body.get("rid") or "")
        await asyncio.wrap_future(scheduler.abort(prefix))
        return Response(status_code=200)

    @app.post("/pause_generation")
    async def pause_generation(request: Request) -> Response:
        raw = await request.body()
        mode = (json.loads(raw) if raw else {}).get("mode", "abort")
        try:
            await asyncio.wrap_future(scheduler.pause(mode))
        except ValueError as err:
            return _error(str(err))
        return JSONResponse({"message": f"Generation paused ({mode}).", "status": "ok"})

    @app.post("/continue_generation")
    async def continue_generation() -> Response:
        await asyncio.wrap_future(scheduler.resume())
        return JSONResponse({"message": "Generation continued.", "status": "ok"})

    async def weight_call(coro) -> JSONResponse:
        try:
            return _control(True, await coro)
        except Exception as err:  # noqa: BLE001 - reported to the caller as success=false
            logger.exception("weight operation failed")
            return _control(False, f"{type(err).__name__}: {err}")

    @app.post("/update_weights_from_disk")
    async def update_weights_from_disk(request: Request) -> Response:
        body = await request.json()
        version = body.get("weight_version")
        return await weight_call(engine.update_weights_from_disk(body["model_path"], _opt_str(version)))

    @app.post("/init_weights_update_group")
    async def init_weights_update_group(request: Request) -> Response:
        body = await request.json()
        return await weight_call(
            engine.init_weights_update_group(
                master_address=str(body["master_address"]),
                master_port=int(body["master_port"]),
                rank_offset=int(body["rank_offset"]),
                world_size=int(body["world_size"]),
                group_name=str(body.get("group_name", "weight_update_group")),
                backend=str(body.get("backend", "gloo")),
            )
        )

    @app.post("/update_weights_from_distributed")
    async def update_weights_from_distributed(request: Request) -> Response:
        body = await request.json()
        return await weight_call(
            engine.update_weights_from_distributed(
                names=list(body["names"]),
                dtypes=list(body["dtypes"]),
                shapes=[list(s) for s in body["shapes"]],
                group_name=str(body.get("group_name", "weight_update_group")),
                weight_version=_opt_str(body.get("weight_version")),
            )
        )

    @app.post("/destroy_weights_update_group")
    async def destroy_weights_update_group(request: Request) -> Response:
        body = await request.json()
        return await weight_call(
            engine.destroy_weights_update_group(str(body.get("group_name", "weight_update_group")))
        )

    @app.get("/get_weight_version")
    async def get_weight_version() -> Response:
        return JSONResponse({"weight_version": engine.weight_version})

    @app.post("/update_weight_version")
    async def update_weight_version(request: Request) -> Response:
        body = await request.json()
        if body.get("abort_all_requests"):
            await asyncio.wrap_future(scheduler.abort(None))
        version = str(body["new_version"])
        await engine.set_weight_version(version)
        return JSONResponse(
            {"success": True, "message": f"Weight version updated to {version}", "new_version": version}
        )

    @app.get("/health")
    @app.get("/health_generate")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/get_model_info")
    @app.get("/model_info")
    async def get_model_info() -> Response:
        return JSONResponse(
            {
                "model_path": engine.args.model_path,
                "tokenizer_path": engine.args.model_path,
                "is_generation": True,
                "preferred_sampling_params": None,
                "weight_version": engine.weight_version,
                "max_context_len": engine.max_context_len,
            }
        )

    @app.get("/get_server_info")
    @app.get("/server_info")
    async def get_server_info() -> Response:
        state = {
            **scheduler.loads(),
            "num_finished_reqs": scheduler.num_finished,
            "weight_version": engine.weight_version,
            "paused": scheduler.is_paused,
        }
        return JSONResponse({**engine.server_info(), "internal_states": [state], "version": SERVER_VERSION})

    @app.get("/v1/loads")
    async def loads() -> Response:
        load = scheduler.loads()
        return JSONResponse({"timestamp": time.time(), "dp_rank_count": 1, "loads": [{"dp_rank": 0, **load}]})

    @app.get("/get_load")
    async def get_load() -> Response:
        load = scheduler.loads()
        return JSONResponse([{"dp_rank": 0, "num_reqs": load["num_running_reqs"] + load["num_waiting_reqs"], **load}])

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> Response:
        ok = await engine.flush_cache()
        return Response(
            "Cache flushed.\n" if ok else "Requests are running; cache not flushed.\n", status_code=200 if ok else 400
        )

    return app


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
