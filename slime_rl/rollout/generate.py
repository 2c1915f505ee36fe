"""Generate the responses of one group through the engine protocol, token in, token out.

`generate_group` runs the run's generate hook (rollout/hook.py) on each unfinished sample; `single_turn`,
the default hook, is one request per round. A sample continues from its own tokens: the request's input
is `prompt_ids + response_ids` and its budget is `max_new_tokens - len(response_ids)`, so an aborted
sample resumes exactly where it stopped (APRIL) and nothing is ever re-tokenised. Every appended token
span records the weight version the engine reported for it. A partial that lags too many versions is
restarted from its prompt instead (`restart_stale_group`). Scheduling (which groups run, when to abort)
is the manager's job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import zlib
from collections.abc import Callable

import numpy as np

from slime_rl.buffer.staleness import is_fresh
from slime_rl.engines.client import EngineClient, EngineError
from slime_rl.engines.protocol import GenerateRequest, SamplingParams
from slime_rl.rollout.hook import GenerateContext, Generation, contract_errors
from slime_rl.rollout.serving import ServingEngines
from slime_rl.types import Group, Sample, Status

logger = logging.getLogger(__name__)

_FINISH_STATUS = {"stop": Status.COMPLETED, "length": Status.TRUNCATED, "abort": Status.ABORTED}


def engine_version(reported: str, fallback: int) -> int:
    """The integer weight version an engine reported (`"default"` before any update means `fallback`)."""
    return int(reported) if reported.lstrip("-").isdigit() else fallback


def request_seed(seed: int, sample: Sample) -> int:
    """Per-request sampling seed: reproducible per sample and resume point, different across samples."""
    return (seed * 1_000_003 + zlib.crc32(sample.uid.encode()) + len(sample.response_ids)) % 2**31


# Metadata a response writes (the hooks' and generate_sample's); a restart from the prompt clears it.
RESPONSE_METADATA = ("error", "gen_time_s", "turns", "final_answer", "stop_reason", "hook")


def restart_sample(sample: Sample, version: int) -> None:
    """Drop every generated token of `sample` (and its response metadata) so it starts again from its prompt."""
    sample.response_ids = np.zeros(0, np.int32)
    sample.rollout_logprobs = np.zeros(0, np.float32)
    sample.loss_mask = np.zeros(0, np.uint8)
    sample.weight_spans = []
    sample.reward = None
    sample.reward_info = {}
    sample.status = Status.PENDING
    sample.created_version = version
    for key in RESPONSE_METADATA:
        sample.metadata.pop(key, None)


def restart_stale_group(group: Group, version: int, max_staleness: int | None) -> bool:
    """Restart every sample of `group` if its oldest generated token lags `version` by more than `max_staleness`.

    Only generated tokens count (a sample without tokens has nothing stale to throw away, whatever its
    `created_version`), so fresh prompt groups never restart. The whole group restarts, finished members
    too, so it never mixes a restarted sample with members older than the cap. Returns True if it restarted.
    """
    generated = [s for s in group.samples if len(s.response_ids)]
    if not generated or is_fresh(Group(group_id=group.group_id, samples=generated), version, max_staleness):
        return False
    for sample in group.samples:
        restart_sample(sample, version)
    return True


async def generate_sample(
    client: EngineClient,
    sample: Sample,
    sampling: SamplingParams,
    max_new_tokens: int,
    version: int,
    *,
    seed: int | None = None,
) -> None:
    """Extend `sample` by one request (its remaining budget) and set its status from the finish reason.

    An engine that refuses the request (HTTP 4xx, e.g. prompt + budget over its context) fails the sample:
    status `failed`, `metadata["error"]` = "engine: <status> <message>", nothing trained; resending it could
    never succeed. Other engine failures raise `EngineError`. `metadata["gen_time_s"]` accumulates the wall
    time of the sample's requests (all resumes included).
    """
    remaining = max_new_tokens - len(sample.response_ids)
    if remaining <= 0:
        sample.status = Status.TRUNCATED
        return
    params = dataclasses.replace(
        sampling, max_new_tokens=remaining, sampling_seed=None if seed is None else request_seed(seed, sample)
    )
    request = GenerateRequest(
        input_ids=np.concatenate([sample.prompt_ids, sample.response_ids]).tolist(),
        sampling_params=params,
        rid=sample.uid,
        return_logprob=True,
    )
    start = time.perf_counter()
    try:
        output = await client.generate(request)
    except EngineError as err:
        if not err.is_bad_request:
            raise
        logger.warning("sample %s: engine refused the request (%s); the sample fails", sample.uid, err)
        sample.fail(f"engine: {err.status_code} {err.detail}")
        return
    sample.metadata["gen_time_s"] = sample.metadata.get("gen_time_s", 0.0) + time.perf_counter() - start
    sample.append_tokens(
        np.asarray(output.output_ids, np.int32),
        np.asarray(output.output_logprobs, np.float32),
        engine_version(output.weight_version, version),
    )
    assert output.finish_reason is not None, "a non-streamed response always has a finish reason"
    sample.status = _FINISH_STATUS[output.finish_reason.type]
    if sample.status is Status.ABORTED and len(sample.response_ids) >= max_new_tokens:
        sample.status = Status.TRUNCATED  # aborted with its budget spent: nothing left to resume


async def single_turn(ctx: GenerateContext, sample: Sample) -> None:
    """The built-in hook (`rollout.generate.kind=single_turn`): one request for the sample's remaining budget."""
    await generate_sample(ctx.client, sample, ctx.sampling, ctx.max_new_tokens, ctx.version, seed=ctx.seed)


async def _until_serving_or_stopped(serving: ServingEngines, stop: asyncio.Event | None) -> None:
    waits = [asyncio.ensure_future(serving.wait_serving())]
    if stop is not None:
        waits.append(asyncio.ensure_future(stop.wait()))
    _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for waiting in pending:
        waiting.cancel()


async def generate_group(
    client: EngineClient,
    group: Group,
    sampling: SamplingParams,
    max_new_tokens: int,
    version: int,
    semaphore: asyncio.Semaphore,
    *,
    stop: asyncio.Event | None = None,
    seed: int | None = None,
    serving: ServingEngines | None = None,
    on_sample_returned: Callable[[], None] | None = None,
    generation: Generation | None = None,
) -> Group:
    """Run the hook of `generation` (default `single_turn`) once on every unfinished sample of `group`.

    `semaphore` bounds the samples inside the hook at once: one request slot per sample, held across
    its turns and tool calls. A custom hook's samples are checked against the contract (`contract_errors`);
    one that breaks it fails, with the reason in `metadata["error"]`.

    Returns the same group. Samples stay `aborted` when their request was aborted, and samples whose turn
    comes after `stop` is set are not sent at all (so an abort cannot be outrun by a queued request). A
    sample whose request the engine refused (HTTP 4xx) comes back `failed` (see `generate_sample`), so it
    finishes its group like any other sample. If an engine fails otherwise (5xx, no answer) after the
    client's retries, the samples keep their previous tokens and status so the caller can recycle the
    group without losing anything; but when `serving` changed meanwhile (the engine was taken out, or none
    serves), the request waits for a serving engine and is sent again (see `ServingEngines`), unless `stop`
    is set meanwhile (an APRIL abort or a weight update must not wait for an engine to come back).
    `on_sample_returned` is called once per unfinished sample when its `run` ends, however it ended.
    """
    generation = generation or Generation(hook=single_turn)
    ctx = generation.context(client, sampling, max_new_tokens=max_new_tokens, version=version, seed=seed, stop=stop)

    async def run(sample: Sample) -> None:
        try:
            await run_until_answered(sample)
        finally:
            if on_sample_returned is not None:
                on_sample_returned()

    async def run_until_answered(sample: Sample) -> None:
        while True:
            async with semaphore:
                if stop is not None and stop.is_set():
                    return
                epoch = serving.epoch if serving is not None else 0
                try:
                    await generation.hook(ctx, sample)
                    if generation.check_contract and (errors := contract_errors(sample, max_new_tokens)):
                        logger.warning("sample %s: the generate hook broke its contract: %s", sample.uid, errors)
                        restart_sample(sample, version)  # its arrays may not even line up: keep none of them
                        sample.fail(f"generate hook: {'; '.join(errors)}")
                    return
                except EngineError as err:
                    if serving is None or not serving.changed_since(epoch):
                        logger.warning("sample %s: engine failed (%s); the group will be recycled", sample.uid, err)
                        return
                    logger.info(
                        "sample %s: its engine went out of service (%s); resending when one serves", sample.uid, err
                    )
            await _until_serving_or_stopped(serving, stop)  # outside the semaphore: other requests go on

    await asyncio.gather(*(run(s) for s in group.samples if not s.status.is_finished))
    return group
