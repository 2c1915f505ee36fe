"""The native engine's runner receives flattened weight buckets straight into its parameters when it can."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from slime_rl.engines.native.runner import BucketLayout, ModelRunner
from slime_rl.engines.tensor_bucket import flatten
from slime_rl.toy.model import make_toy_model

PROMPT = [1, 6, 7, 77, 8, 85]


@pytest.fixture(scope="module")
def states(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A toy model's directory, its weights and another seed's weights (HF names)."""
    root = tmp_path_factory.mktemp("toy")
    first, second = make_toy_model(root / "a", seed=0), make_toy_model(root / "b", seed=1)
    return str(first), load_file(first / "model.safetensors"), load_file(second / "model.safetensors")


def _layout(tensors: dict[str, torch.Tensor]) -> BucketLayout:
    return tuple(tensors), tuple(t.dtype for t in tensors.values()), tuple(tuple(t.shape) for t in tensors.values())


def _send(runner: ModelRunner, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a weight-update broadcast does: the bucket's bytes land in the buffer the runner gave; then load."""
    layout = _layout(tensors)
    buffer = runner.bucket_buffer(layout)
    buffer.copy_(flatten(list(tensors.values())))
    assert runner.load_bucket(layout, buffer) == len(tensors)
    return buffer


def _halves(state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    names = list(state)
    return [{n: state[n] for n in names[: len(names) // 2]}, {n: state[n] for n in names[len(names) // 2 :]}]


def _expected_logits(model_dir: str, state: dict[str, torch.Tensor]) -> torch.Tensor:
    reference = ModelRunner(model_dir, device="cpu", dtype=torch.float32, num_slots=1, max_len=64)
    reference.load_weights(state.items())
    return reference.prefill(0, [PROMPT])


def test_buckets_are_adopted_then_received_in_place_and_a_rebucketing_moves_them(states):
    model_dir, first, second = states
    runner = ModelRunner(model_dir, device="cpu", dtype=torch.float32, num_slots=1, max_len=64)
    params = dict(runner.model.named_parameters())
    buffers = [_send(runner, bucket) for bucket in _halves(second)]
    torch.testing.assert_close(runner.prefill(0, [PROMPT]), _expected_logits(model_dir, second), rtol=0, atol=0)
    # Every parameter now lives in its bucket's buffer: the next publish writes the model itself.
    storages = {buffer.untyped_storage().data_ptr() for buffer in buffers}
    assert {p.untyped_storage().data_ptr() for p in params.values()} == storages
    pointers = {name: p.data_ptr() for name, p in params.items()}
    assert [_send(runner, bucket).data_ptr() for bucket in _halves(first)] == [b.data_ptr() for b in buffers]
    assert {name: p.data_ptr() for name, p in params.items()} == pointers
    torch.testing.assert_close(runner.prefill(0, [PROMPT]), _expected_logits(model_dir, first), rtol=0, atol=0)
    # The trainer re-buckets (one bucket): the parameters move, and the old buffers are no longer kept.
    whole = _send(runner, second)
    assert {p.untyped_storage().data_ptr() for p in params.values()} == {whole.untyped_storage().data_ptr()}
    assert all(runner.bucket_buffer(_layout(b)).data_ptr() not in pointers.values() for b in _halves(second))
    torch.testing.assert_close(runner.prefill(0, [PROMPT]), _expected_logits(model_dir, second), rtol=0, atol=0)
    # Loading from disk copies into the adopted storage, as into any parameter.
    runner.load_weights(first.items())
    torch.testing.assert_close(runner.prefill(0, [PROMPT]), _expected_logits(model_dir, first), rtol=0, atol=0)


def test_a_bucket_in_another_dtype_is_copied_out_of_a_scratch_buffer(states):
    model_dir, _first, second = states
    runner = ModelRunner(model_dir, device="cpu", dtype=torch.float32, num_slots=1, max_len=64)
    halves = [{n: t.to(torch.float64) for n, t in half.items()} for half in _halves(second)]
    buffers = [_send(runner, half) for half in halves]
    assert buffers[0].untyped_storage().data_ptr() == buffers[1].untyped_storage().data_ptr()  # one scratch
    assert all(
        p.untyped_storage().data_ptr() != buffers[0].untyped_storage().data_ptr() for p in runner.model.parameters()
    )
    torch.testing.assert_close(runner.prefill(0, [PROMPT]), _expected_logits(model_dir, second), rtol=0, atol=1e-6)


def test_an_abandoned_receive_leaves_the_parameters_their_own_storage(states):
    model_dir, _first, second = states
    runner = ModelRunner(model_dir, device="cpu", dtype=torch.float32, num_slots=1, max_len=64)
    buffer = _send(runner, second)
    runner.release_bucket_buffer(_layout(second))  # what the engine does when the group is destroyed mid-receive
    buffer.zero_()  # the abandoned receive writing on
    assert runner.bucket_buffer(_layout(second)).data_ptr() != buffer.data_ptr()
    torch.testing.assert_close(runner.prefill(0, [PROMPT]), _expected_logits(model_dir, second), rtol=0, atol=0)


def test_a_bad_bucket_is_refused_before_anything_is_received(states):
    model_dir, _first, second = states
    runner = ModelRunner(model_dir, device="cpu", dtype=torch.float32, num_slots=1, max_len=64)
    name, tensor = next(iter(second.items()))
    with pytest.raises(ValueError, match="is not a parameter"):
        runner.bucket_buffer(_layout({"model.nonexistent.weight": tensor}))
    with pytest.raises(ValueError, match="shape"):
        runner.bucket_buffer(_layout({name: tensor[:1]}))


def test_per_tensor_updates_land_in_the_parameters_and_an_abandoned_one_lets_go_of_them(states):
    model_dir, first, second = states
    runner = ModelRunner(model_dir, device="cpu", dtype=torch.float32, num_slots=1, max_len=64)
    params = dict(runner.model.named_parameters())
    mixed = {name: t.to(torch.float64) if "norm" in name else t for name, t in second.items()}
    targets = runner.tensor_targets(_layout(mixed))
    in_place = {
        name for name, target in zip(mixed, targets, strict=True) if target.data_ptr() == params[name].data_ptr()
    }
    assert in_place == {name for name in mixed if "norm" not in name}  # another dtype is received beside and copied
    for target, tensor in zip(targets, mixed.values(), strict=True):
        target.copy_(tensor)  # what the broadcasts do
    assert runner.load_tensors(list(mixed), targets) == len(mixed)
    torch.testing.assert_close(runner.prefill(0, [PROMPT]), _expected_logits(model_dir, second), rtol=0, atol=1e-6)
    targets = runner.tensor_targets(_layout(first))
    runner.release_targets(targets)  # the group was destroyed mid-receive
    for target in targets:
        target.zero_()  # the abandoned receives writing on
    torch.testing.assert_close(runner.prefill(0, [PROMPT]), _expected_logits(model_dir, second), rtol=0, atol=1e-6)
