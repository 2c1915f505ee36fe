"""Native engine numerics: greedy equals `generate()`, logprobs equal a forward pass, weight updates apply."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from functools import partial

import pytest
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from slime_rl.config.engine import EngineConfig
from slime_rl.engines.client import EngineClient, EngineError
from slime_rl.engines.protocol import GenerateOutput, GenerateRequest, SamplingParams
from slime_rl.engines.server import EngineProcess
from slime_rl.engines.tensor_bucket import flatten
from slime_rl.engines.weight_group import leave_group, new_group
from slime_rl.toy.model import make_toy_model
from slime_rl.trainer.rendezvous import listen_socket, store_server

PROMPTS = [[1, 6, 7, 77, 8, 85], [1, 9], [1, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29], [1, 50, 51]]
NUM_TOKENS = 24


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return make_toy_model(root / "a", seed=0), make_toy_model(root / "b", seed=1)


@pytest.fixture(scope="module")
def engine_url(models, tmp_path_factory):
    cfg = EngineConfig(max_running_requests=8, max_context_len=256, startup_timeout_s=120)
    engine = EngineProcess(cfg, str(models[0]), log_path=str(tmp_path_factory.mktemp("logs") / "engine.log"))
    try:
        yield engine.start()
    finally:
        engine.stop()


def greedy_outputs(url: str, **params) -> list[GenerateOutput]:
    async def go():
        async with EngineClient(url) as client:
            sampling = SamplingParams(max_new_tokens=NUM_TOKENS, min_new_tokens=NUM_TOKENS, temperature=0.0, **params)
            requests = [GenerateRequest(input_ids=p, sampling_params=sampling) for p in PROMPTS]
            return await asyncio.gather(*(client.generate(r) for r in requests))

    return asyncio.run(go())


def hf_greedy(model_dir) -> list[list[int]]:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return [
        model.generate(torch.tensor([p]), max_new_tokens=NUM_TOKENS, min_new_tokens=NUM_TOKENS, do_sample=False)[
            0, len(p) :
        ].tolist()
        for p in PROMPTS
    ]


def test_greedy_equals_generate_token_for_token_with_ragged_rows(engine_url, models):
    outs = greedy_outputs(engine_url)
    assert [o.output_ids for o in outs] == hf_greedy(models[0])


def test_logprobs_match_forward_pass_and_seed_is_reproducible(engine_url, models):
    async def go():
        async with EngineClient(engine_url) as client:
            params = SamplingParams(max_new_tokens=16, ignore_eos=True, sampling_seed=123)
            request = GenerateRequest(input_ids=PROMPTS[0], sampling_params=params)
            return await asyncio.gather(client.generate(request), client.generate(request))

    first, second = asyncio.run(go())
    assert first.output_ids == second.output_ids and len(first.output_ids) == 16
    model = AutoModelForCausalLM.from_pretrained(models[0])
    ids = torch.tensor([PROMPTS[0] + first.output_ids])
    with torch.no_grad():
        logprobs = model(ids).logits[0].float().log_softmax(-1)
    positions = torch.arange(len(PROMPTS[0]) - 1, ids.shape[1] - 1)
    expected = logprobs[positions, ids[0, len(PROMPTS[0]) :]]
    torch.testing.assert_close(torch.tensor(first.output_logprobs), expected, atol=1e-4, rtol=0)


def test_update_weights_from_disk_changes_outputs_and_version(engine_url, models):
    async def update(path, version):
        async with EngineClient(engine_url) as client:
            await client.update_weights_from_disk(str(path), weight_version=version)
            return await client.get_weight_version()

    try:
        assert asyncio.run(update(models[1], "1")) == "1"
        outs = greedy_outputs(engine_url)
        assert [o.output_ids for o in outs] == hf_greedy(models[1])
        assert {o.weight_version for o in outs} == {"1"}
    finally:
        _restore(engine_url, models[0])


async def _join(client: EngineClient, group_name: str):
    """Build a weight-update group with the engine as rank 1; this test is rank 0 (standing in for the trainer)."""
    listener = listen_socket("127.0.0.1")
    port = listener.getsockname()[1]
    timeout = timedelta(seconds=120)
    store = store_server(listener, 2, timeout, wait_for_workers=False)  # takes over the listening socket
    join = asyncio.create_task(
        client.init_weights_update_group(
            master_address="127.0.0.1",
            master_port=port,
            rank_offset=1,
            world_size=2,
            group_name=group_name,
        )
    )
    group = await asyncio.to_thread(
        partial(new_group, store, rank=0, world_size=2, group_name=group_name, backend="gloo", timeout=timeout)
    )
    await join
    return group


def _announce(client: EngineClient, state: dict[str, torch.Tensor], group_name: str, **body) -> asyncio.Task:
    return asyncio.create_task(
        client.update_weights_from_distributed(
            names=list(state),
            dtypes=[str(t.dtype).removeprefix("torch.") for t in state.values()],
            shapes=[list(t.shape) for t in state.values()],
            group_name=group_name,
            **body,
        )
    )


def _restore(engine_url: str, model_dir) -> None:
    async def restore():
        async with EngineClient(engine_url) as client:
            await client.update_weights_from_disk(str(model_dir), weight_version="0")

    asyncio.run(restore())


@pytest.mark.parametrize("load_format", [None, "flattened_bucket"])
def test_update_weights_from_gloo_group_changes_outputs_and_version(engine_url, models, load_format):
    new_state = AutoModelForCausalLM.from_pretrained(models[1]).state_dict()
    group_name = f"test_sync_{load_format}"

    async def go():
        async with EngineClient(engine_url) as client:
            group = await _join(client, group_name)
            # Twice: the second time, the engine receives into the parameters it took over the first time.
            for version in ("2", "3"):
                update = _announce(client, new_state, group_name, weight_version=version, load_format=load_format)
                if load_format is None:
                    sent = [t.contiguous() for t in new_state.values()]
                else:
                    sent = [flatten(list(new_state.values()))]

                def broadcast(sent=sent) -> None:
                    options = dist.BroadcastOptions()
                    options.rootRank = 0
                    for tensor in sent:
                        group.broadcast([tensor], options).wait()

                await asyncio.to_thread(broadcast)
                await update
            await client.destroy_weights_update_group(group_name)
            leave_group(group)
            return await client.get_weight_version()

    assert asyncio.run(go()) == "3"
    try:
        outs = greedy_outputs(engine_url)
        assert [o.output_ids for o in outs] == hf_greedy(models[1])
        assert {o.weight_version for o in outs} == {"3"}
    finally:
        _restore(engine_url, models[0])


@pytest.mark.parametrize("load_format", [None, "flattened_bucket"])
def test_a_group_destroyed_mid_update_frees_the_engine_which_keeps_its_weights(engine_url, models, load_format):
    # The trainer gave up before broadcasting (another engine died): destroying the group must end the receive
    # the engine waits in, leave its weights and version as they were, and let it join the next group.
    before = greedy_outputs(engine_url)
    new_state = AutoModelForCausalLM.from_pretrained(models[1]).state_dict()
    group_name = f"test_abandoned_{load_format}"

    async def go():
        async with EngineClient(engine_url, max_retries=0) as client:
            group = await _join(client, group_name)
            update = _announce(client, new_state, group_name, weight_version="9", load_format=load_format)
            await asyncio.sleep(0.5)  # the engine is waiting in the broadcast
            await client.destroy_weights_update_group(group_name)
            with pytest.raises(EngineError, match="destroyed during the broadcast"):
                await update
            return group, await client.get_weight_version()

    group, version = asyncio.run(go())
    try:
        assert version == "0"
        assert [o.output_ids for o in greedy_outputs(engine_url)] == [o.output_ids for o in before]
    finally:
        leave_group(group, abort=True)
