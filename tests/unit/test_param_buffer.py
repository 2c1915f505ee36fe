"""trainer/param_buffer.py: parameters moved into one buffer keep their objects and values."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from slime_rl.engines.tensor_bucket import lies_after
from slime_rl.trainer.param_buffer import move_into_buffer


def test_parameters_become_back_to_back_views_of_one_buffer_keeping_objects_and_values():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    before = {name: (param, param.detach().clone()) for name, param in model.named_parameters()}
    params = list(model.parameters())[::-1]
    buffer = move_into_buffer(params, spare=5)
    assert buffer.numel() == sum(p.numel() for p in params) + 5
    for name, param in model.named_parameters():
        assert param is before[name][0] and torch.equal(param, before[name][1]) and param.requires_grad
    assert params[0].data_ptr() == buffer.data_ptr()
    assert all(lies_after(a, b) for a, b in pairwise(params))
    assert lies_after(params[-1], buffer[-5:])  # the spare elements continue the run
    # Training updates them in place, through the buffer.
    model[0].weight.data.add_(1.0)
    assert torch.equal(buffer[-5 - 12 : -5].view(3, 4), before["0.weight"][1] + 1)


def test_parameters_of_two_dtypes_are_refused():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))]
    with pytest.raises(ValueError, match="one dtype"):
        move_into_buffer(params)
