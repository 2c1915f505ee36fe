"""A custom generate hook, chosen with
`rollout.generate.kind=custom rollout.generate.path=examples.custom_generate:answer_then_review`.

A hook is `async def fn(ctx: GenerateContext, sample: Sample) -> None` (contract: slime_rl/rollout/hook.py).
This one runs two policy turns with an environment message between them: the policy answers within half the
budget, the environment appends `REVIEW` (loss mask 0, not trained), and the policy revises with the rest.
It keeps its progress in `sample.metadata["hook"]`, so an aborted sample resumes in the right phase.
"""

import numpy as np

from slime_rl.rollout.generate import generate_sample
from slime_rl.rollout.hook import GenerateContext
from slime_rl.types import Sample, Status

REVIEW = "\nReview your answer:\n"


async def answer_then_review(ctx: GenerateContext, sample: Sample) -> None:
    """Turn 1 (the answer, half the budget), the REVIEW message (mask 0), turn 2 (the revision)."""
    if ctx.codec is None:
        raise ValueError("answer_then_review needs ctx.codec (the rollout worker sets it)")
    state = sample.metadata.setdefault("hook", {"phase": "answer"})
    if state["phase"] == "answer":
        if ctx.is_stopped:
            sample.status = Status.ABORTED
            return
        # generate_sample's budget is the response's total: half of it bounds the first turn.
        await generate_sample(ctx.client, sample, ctx.sampling, ctx.max_new_tokens // 2, ctx.version, seed=ctx.seed)
        if not sample.status.is_finished or sample.status is Status.FAILED:
            return  # aborted mid-turn: the next call continues the answer from its tokens
        review = ctx.codec.encode(REVIEW)[: ctx.max_new_tokens - len(sample.response_ids)]
        sample.append_observation(np.asarray(review, np.int32))
        state["phase"] = "review"
        sample.status = Status.PENDING
    if ctx.is_stopped:
        sample.status = Status.ABORTED
        return
    await generate_sample(ctx.client, sample, ctx.sampling, ctx.max_new_tokens, ctx.version, seed=ctx.seed)
