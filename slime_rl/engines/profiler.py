"""Profile every rollout engine at once, as slime's `tools/profile_rollout.py` does: list the router's workers
(`GET /workers`) and post SGLang's `/start_profile` or `/stop_profile` to each.

Works with SGLang and the native engine alike; each engine writes its own trace into `output_dir` on its
own machine. All engines are asked concurrently; when any refuses, `EngineProfileError` names every engine
that refused and why (the others have started or stopped).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx

from slime_rl.engines.client import EngineClient, EngineError


class EngineProfileError(EngineError):
    """One or more engines refused a profiler call; `refused` maps each such URL to its reason."""

    def __init__(self, message: str, refused: dict[str, str]) -> None:
        super().__init__(message)
        self.refused = refused


async def router_workers(router_url: str, timeout_s: float = 10.0) -> list[str]:
    """The URLs of the workers registered with the router at `router_url` (its `GET /workers`)."""
    where = f"GET {router_url.rstrip('/')}/workers"
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(f"{router_url.rstrip('/')}/workers")
        response.raise_for_status()
        return [str(worker["url"]) for worker in response.json()["workers"]]
    except httpx.HTTPError as err:
        raise EngineError(f"{where} failed: {err!r}") from err
    except (ValueError, KeyError, TypeError) as err:
        raise EngineError(f"{where}: malformed answer ({type(err).__name__}: {err})") from err


async def _each(urls: Sequence[str], call: str, body: dict) -> dict[str, str]:
    async def one(url: str) -> str:
        async with EngineClient(url, timeout_s=120.0) as client:
            return await getattr(client, call)(**body)

    answers = await asyncio.gather(*(one(url) for url in urls), return_exceptions=True)
    refused = {url: str(a) for url, a in zip(urls, answers, strict=True) if isinstance(a, BaseException)}
    for answer in answers:
        if isinstance(answer, BaseException) and not isinstance(answer, EngineError):
            raise answer
    if refused:
        lines = "; ".join(f"{url}: {reason}" for url, reason in refused.items())
        raise EngineProfileError(f"{call} refused by {len(refused)} of {len(urls)} engines: {lines}", refused)
    return {url: str(answer) for url, answer in zip(urls, answers, strict=True)}


async def start_engine_profilers(
    urls: Sequence[str],
    output_dir: str,
    num_steps: int | None = None,
    activities: Sequence[str] = ("CPU", "GPU"),
) -> dict[str, str]:
    """Start a profile on every engine in `urls`; returns each engine's answer by URL.

    `num_steps`: model steps each engine records before it writes its trace by itself; None = until
    `stop_engine_profilers`. Raises EngineProfileError naming each engine that refused.
    """
    body = {"output_dir": output_dir, "num_steps": num_steps, "activities": list(activities)}
    return await _each(urls, "start_profile", body)


async def stop_engine_profilers(urls: Sequence[str]) -> dict[str, str]:
    """Stop the profile on every engine in `urls` (each writes its trace); returns each answer by URL.

    Raises EngineProfileError naming each engine that refused (one not profiling, e.g. after `num_steps`).
    """
    return await _each(urls, "stop_profile", {})
