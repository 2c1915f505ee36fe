"""SGLang's flattened bucket layout: bytes in order, aligned offsets, views back."""

import pytest
import torch

from slime_rl.engines.tensor_bucket import byte_ranges, flatten, unflatten


def test_flatten_then_unflatten_is_bit_exact_across_dtypes():
    tensors = [torch.arange(6, dtype=torch.int64).reshape(2, 3), torch.randn(3, 5), torch.randn(4).to(torch.bfloat16)]
    buffer = flatten(tensors)
    assert buffer.dtype == torch.uint8 and buffer.numel() == 6 * 8 + 3 * 5 * 4 + 4 * 2
    back = unflatten(buffer, [t.dtype for t in tensors], [list(t.shape) for t in tensors])
    for original, view in zip(tensors, back, strict=True):
        assert view.dtype == original.dtype and torch.equal(view, original)


def test_byte_ranges_follow_sglang_and_refuse_misaligned_offsets():
    assert byte_ranges([torch.float32, torch.bfloat16], [[2, 3], [4]]) == [(0, 24), (24, 32)]
    with pytest.raises(ValueError, match="cannot start at byte 2"):
        byte_ranges([torch.bfloat16, torch.float32], [[1], [1]])  # a float32 after 2 bytes


def test_unflatten_refuses_a_buffer_of_the_wrong_size():
    with pytest.raises(ValueError, match="does not hold the announced tensors"):
        unflatten(torch.zeros(10, dtype=torch.uint8), [torch.float32], [[2]])
