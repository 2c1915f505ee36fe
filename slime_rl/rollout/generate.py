"""Generate the responses of one group through the engine protocol, token in, token out.

A sample continues from its own tokens: the request's input is `prompt_ids + response_ids` and its
budget is `max_new_tokens - len(response_ids)`, so an aborted sample resumes exactly where it stopped
(APRIL) and nothing is ever re-tokenised. Every appended token span records the weight version the
engine reported for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import numpy as np

from slime_rl.engines.client import EngineClient, EngineError
from slime_rl.engines.protocol import GenerateRequest, SamplingParams
from slime_rl.types import Group, Sample, Status

logger = logging.getLogger(__name__)

_FINISH_STATUS = {"stop": Status.COMPLETED, "length": Status.TRUNCATED, "abort": Status.ABORTED}


def engine_version(reported: str, fallback: int) -> int:
    """The integer weight version an engine reported (`"default"` before any update means `fallback`)."""
    return int(reported) if reported.lstrip("-").isdigit() else fallback


async def generate_sample(
    client: EngineClient, sample: Sample, sampling: SamplingParams, max_new_tokens: int, version: int
) -> None:
    """Extend `sample` by one request (its remaining budget) and set its status from the finish reason."""
    remaining = max_new_tokens - len(sample.response_ids)
    if remaining <= 0:
        sample.status = Status.TRUNCATED
        return
    request = GenerateRequest(
        input_ids=np.concatenate([sample.prompt_ids, sample.response_ids]).tolist(),
        sampling_params=dataclasses.replace(sampling, max_new_tokens=remaining),
        rid=sample.uid,
        return_logprob=True,
    )
    output = await client.generate(request)
    sample.append_tokens(
        np.asarray(output.output_ids, np.int32),
        np.asarray(output.output_logprobs, np.float32),
        engine_version(output.weight_version, version),
    )
    assert output.finish_reason is not None, "a non-streamed response always has a finish reason"
    sample.status = _FINISH_STATUS[output.finish_reason.type]
    if sample.status is Status.ABORTED and len(sample.response_ids) >= max_new_tokens:
        sample.status = Status.TRUNCATED  # aborted with its budget spent: nothing left to resume


async def generate_group(
    client: EngineClient,
    group: Group,
    sampling: SamplingParams,
    max_new_tokens: int,
    version: int,
    semaphore: asyncio.Semaphore,
) -> Group:
    """Run every unfinished sample of `group` once, `semaphore` bounding requests in flight.

    Returns the same group. Samples stay `aborted` when their request was aborted; if an engine fails
    after the client's retries, the failed samples keep their previous tokens and status so the caller
    can recycle the group without losing anything.
    """

    async def run(sample: Sample) -> None:
        async with semaphore:
            try:
                await generate_sample(client, sample, sampling, max_new_tokens, version)
            except EngineError as err:
                logger.warning("sample %s: engine failed (%s); the group will be recycled", sample.uid, err)

    await asyncio.gather(*(run(s) for s in group.samples if not s.status.is_finished))
    return group
