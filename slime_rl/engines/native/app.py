"""HTTP layer of the native engine: SGLang's endpoints and JSON shapes (REFERENCE.md §1) over Starlette.

Owns routes, response assembly, detokenisation and SSE streaming; bodies.py parses and validates request
bodies, and every `BadRequest` it raises is answered with HTTP 400 `{"error": {"message"}}`. Model work
never runs on the event loop: requests go to the scheduler's model thread and come back through
`call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from slime_rl.engines.native.bodies import BadRequest, check, field, parse_generate, parse_profile, read_json
from slime_rl.engines.native.profiler import ProfileError
from slime_rl.engines.native.requests import EngineRequest, RequestUpdate

if TYPE_CHECKING:  # the simulated engine serves through this app too, without importing torch
    from slime_rl.engines.native.engine import NativeEngine
    from slime_rl.engines.simulated.engine import SimulatedEngine

logger = logging.getLogger(__name__)
SERVER_VERSION = "slime-rl-native-0.1"
SESSION_SELECTORS = ("target", "draft", "all")  # SGLang's model runners a session covers; this engine has one


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status)


def _control(success: bool, message: str) -> JSONResponse:
    return JSONResponse({"success": success, "message": message}, status_code=200 if success else 400)


def _response(
    engine: NativeEngine | SimulatedEngine, item: dict[str, Any], update: RequestUpdate, started: float
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "id": item["rid"],
        "finish_reason": update.finish_reason.to_json() if update.finish_reason else None,
        "prompt_tokens": len(item["input_ids"]),
        "completion_tokens": len(update.output_ids),
        "cached_tokens": 0,
        "weight_version": update.weight_version,
        "e2e_latency": time.monotonic() - started,
        **update.metrics,
    }
    if item["return_logprob"]:
        meta["output_token_logprobs"] = [
            [lp, t, None] for lp, t in zip(update.logprobs, update.output_ids, strict=True)
        ]
        meta["input_token_logprobs"] = []
    skip = item["params"].skip_special_tokens
    text = engine.tokenizer.decode(update.output_ids, skip_special_tokens=skip)
    return {"text": text, "output_ids": update.output_ids, "meta_info": meta}


async def _bad_request(_: Request, err: Exception) -> Response:
    return _error(str(err))


async def _http_error(_: Request, err: Exception) -> Response:
    """Unknown path or method: FastAPI's (so SGLang's) body, `{"detail": "Not Found"}`."""
    assert isinstance(err, HTTPException)
    return JSONResponse({"detail": err.detail}, status_code=err.status_code, headers=err.headers)


def build_app(engine: NativeEngine | SimulatedEngine) -> Starlette:
    """The app serving `engine` (already started): the native engine, or the simulated one, which has the same
    attributes and methods (engines/simulated/engine.py) over a cost model instead of a model.

    Plain Starlette, not FastAPI as in SGLang: every handler reads its body itself (bodies.py), so FastAPI's
    dependency and validation layers would only add CPU per request (140 against 98 us for a bare JSON
    endpoint under uvicorn here), which the simulated engines, many to a process, pay on every request.
    """
    scheduler = engine.scheduler
    routes: list[Route] = []

    def route(*paths: str, methods: tuple[str, ...] = ("POST",)):
        def register(endpoint):
            routes.extend(Route(path, endpoint, methods=list(methods)) for path in paths)
            return endpoint

        return register

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

    @route("/generate")
    async def generate(request: Request) -> Response:
        started = time.monotonic()
        body = await read_json(request)
        items, is_batch = parse_generate(
            body, engine.tokenizer, context_len=engine.max_context_len, vocab_size=engine.vocab_size
        )
        stream = field(body, "stream", bool, False)
        if stream and is_batch:
            raise BadRequest("streaming supports one sequence per request")
        try:
            queues = [submit(item, stream=stream) for item in items]
        except ValueError as err:  # a rid that is still running
            return _error(str(err))
        if stream:
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

    @route("/abort_request")
    async def abort_request(request: Request) -> Response:
        body = await read_json(request, allow_empty=True)
        prefix = None if field(body, "abort_all", bool, False) else field(body, "rid", str, "")
        await asyncio.wrap_future(scheduler.abort(prefix))
        return Response(status_code=200)

    @route("/pause_generation")
    async def pause_generation(request: Request) -> Response:
        mode = field(await read_json(request, allow_empty=True), "mode", str, "abort")
        try:
            await asyncio.wrap_future(scheduler.pause(mode))
        except ValueError as err:
            return _error(str(err))
        return JSONResponse({"message": f"Generation paused ({mode}).", "status": "ok"})

    @route("/continue_generation")
    async def continue_generation(_: Request) -> Response:
        await asyncio.wrap_future(scheduler.resume())
        return JSONResponse({"message": "Generation continued.", "status": "ok"})

    async def weight_call(coro) -> JSONResponse:
        try:
            return _control(True, await coro)
        except Exception as err:  # noqa: BLE001 - reported to the caller as success=false
            logger.exception("weight operation failed")
            return _control(False, f"{type(err).__name__}: {err}")

    @route("/update_weights_from_disk")
    async def update_weights_from_disk(request: Request) -> Response:
        body = await read_json(request)
        return await weight_call(
            engine.update_weights_from_disk(field(body, "model_path", str), field(body, "weight_version", str, None))
        )

    @route("/init_weights_update_group")
    async def init_weights_update_group(request: Request) -> Response:
        body = await read_json(request)
        master_port, world_size = field(body, "master_port", int), field(body, "world_size", int)
        rank_offset = field(body, "rank_offset", int)
        if not 0 < master_port < 65536:
            raise BadRequest(f"master_port must be a TCP port, got {master_port}")
        if not 0 < rank_offset < world_size:
            raise BadRequest(f"rank_offset must be in [1, world_size={world_size}), got {rank_offset}")
        return await weight_call(
            engine.init_weights_update_group(
                master_address=field(body, "master_address", str),
                master_port=master_port,
                rank_offset=rank_offset,
                world_size=world_size,
                group_name=field(body, "group_name", str, "weight_update_group"),
                backend=field(body, "backend", str, "gloo"),
            )
        )

    @route("/update_weights_from_distributed")
    async def update_weights_from_distributed(request: Request) -> Response:
        body = await read_json(request)
        names = [check(name, str, "names[]") for name in field(body, "names", list)]
        dtypes = [check(dtype, str, "dtypes[]") for dtype in field(body, "dtypes", list)]
        shapes = [
            [check(n, int, "shapes[][]") for n in check(s, list, "shapes[]")] for s in field(body, "shapes", list)
        ]
        if not len(names) == len(dtypes) == len(shapes):
            raise BadRequest(
                f"names ({len(names)}), dtypes ({len(dtypes)}) and shapes ({len(shapes)}) differ in length"
            )
        if any(n < 0 for shape in shapes for n in shape):
            raise BadRequest("shapes must not hold negative sizes")
        return await weight_call(
            engine.update_weights_from_distributed(
                names=names,
                dtypes=dtypes,
                shapes=shapes,
                group_name=field(body, "group_name", str, "weight_update_group"),
                weight_version=field(body, "weight_version", str, None),
                load_format=field(body, "load_format", str, None),
            )
        )

    # SGLang 0.5.23's weight-update session. This engine has nothing to prepare or finalize around an update
    # and, like SGLang 0.5.15, also accepts updates outside a session; it keeps only SGLang's rules for the
    # session itself (one at a time, `end` only after `begin`), so that callers that use it are checked.
    session_open = False

    @route("/begin_weight_update")
    async def begin_weight_update(request: Request) -> Response:
        nonlocal session_open
        selector = field(await read_json(request, allow_empty=True), "selector", str, "all")
        if selector not in SESSION_SELECTORS:
            raise BadRequest(f"selector must be one of {SESSION_SELECTORS}, got {selector!r}")
        if session_open:
            return _control(False, "A weight update session is already open; end it first.")
        session_open = True
        return _control(True, "Weight update session opened.")

    @route("/end_weight_update")
    async def end_weight_update(request: Request) -> Response:
        nonlocal session_open
        await read_json(request, allow_empty=True)
        if not session_open:
            return _control(False, "No weight update session is open; begin one first.")
        session_open = False
        return _control(True, "Weight update session closed.")

    @route("/destroy_weights_update_group")
    async def destroy_weights_update_group(request: Request) -> Response:
        body = await read_json(request, allow_empty=True)
        return await weight_call(
            engine.destroy_weights_update_group(field(body, "group_name", str, "weight_update_group"))
        )

    @route("/get_weight_version", methods=("GET",))
    async def get_weight_version(_: Request) -> Response:
        return JSONResponse({"weight_version": engine.weight_version})

    @route("/update_weight_version")
    async def update_weight_version(request: Request) -> Response:
        body = await read_json(request)
        version = field(body, "new_version", str)
        if field(body, "abort_all_requests", bool, False):
            await asyncio.wrap_future(scheduler.abort(None))
        await engine.set_weight_version(version)
        return JSONResponse(
            {"success": True, "message": f"Weight version updated to {version}", "new_version": version}
        )

    @route("/health", "/health_generate", methods=("GET",))
    async def health(_: Request) -> Response:
        return Response(status_code=200)

    @route("/get_model_info", "/model_info", methods=("GET",))
    async def get_model_info(_: Request) -> Response:
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

    @route("/get_server_info", "/server_info", methods=("GET",))
    async def get_server_info(_: Request) -> Response:
        state = {
            **scheduler.loads(),
            "num_finished_reqs": scheduler.num_finished,
            "weight_version": engine.weight_version,
            "paused": scheduler.is_paused,
        }
        # tp_size: the ranks this engine joins a weight-update group with (WeightUpdateGroups: one).
        return JSONResponse(
            {**engine.server_info(), "tp_size": 1, "internal_states": [state], "version": SERVER_VERSION}
        )

    @route("/v1/loads", methods=("GET",))
    async def loads(_: Request) -> Response:
        load = scheduler.loads()
        return JSONResponse({"timestamp": time.time(), "dp_rank_count": 1, "loads": [{"dp_rank": 0, **load}]})

    @route("/get_load", methods=("GET",))
    async def get_load(_: Request) -> Response:
        load = scheduler.loads()
        return JSONResponse([{"dp_rank": 0, "num_reqs": load["num_running_reqs"] + load["num_waiting_reqs"], **load}])

    @route("/flush_cache", methods=("GET", "POST"))
    async def flush_cache(_: Request) -> Response:
        ok = await engine.flush_cache()
        return Response(
            "Cache flushed.\n" if ok else "Requests are running; cache not flushed.\n", status_code=200 if ok else 400
        )

    # SGLang answers a refused start or stop with HTTP 500 (its handler raises RuntimeError); the body here
    # is SGLang's message instead of "Internal Server Error".
    @route("/start_profile", methods=("GET", "POST"))
    async def start_profile(request: Request) -> Response:
        profile = parse_profile(await read_json(request, allow_empty=True))
        profiler = getattr(scheduler, "profiler", None)  # the simulated engine runs no model steps
        if profiler is None:
            raise BadRequest("this engine runs no model steps to profile")
        try:
            await asyncio.wrap_future(scheduler.call(lambda: profiler.start(profile)))
        except ProfileError as err:
            return Response(f"{err}\n", status_code=500)
        return Response("Start profiling.\n", status_code=200)

    @route("/stop_profile", methods=("GET", "POST"))
    async def stop_profile(_: Request) -> Response:
        profiler = getattr(scheduler, "profiler", None)
        if profiler is None:
            raise BadRequest("this engine runs no model steps to profile")
        try:
            await asyncio.wrap_future(scheduler.call(profiler.stop))
        except ProfileError as err:
            return Response(f"{err}\n", status_code=500)
        return Response("Stop profiling. This will take some time.\n", status_code=200)

    return Starlette(routes=routes, exception_handlers={BadRequest: _bad_request, HTTPException: _http_error})
