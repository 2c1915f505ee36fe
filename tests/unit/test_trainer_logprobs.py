"""Vocabulary-parallel logprobs and entropy on one rank, against log_softmax worked out directly."""

from __future__ import annotations

import math

import torch

from slime_rl.trainer.logprobs import vocab_parallel_logprobs


def test_logprobs_of_uniform_logits_are_minus_log_vocab():
    logprobs, entropy = vocab_parallel_logprobs(
        torch.zeros(3, 4), torch.tensor([0, 1, 3]), vocab_start=0, vocab_size=4, with_entropy=True
    )
    torch.testing.assert_close(logprobs, torch.full((3,), -math.log(4)))
    torch.testing.assert_close(entropy, torch.full((3,), math.log(4)))


def test_logprobs_ignore_padding_columns_and_scale_by_temperature():
    logits = torch.tensor([[math.log(1.0), math.log(3.0), 50.0]])  # last column is TP padding
    logprobs, entropy = vocab_parallel_logprobs(
        logits, torch.tensor([1]), vocab_start=0, vocab_size=2, temperature=0.5, with_entropy=True
    )
    # softmax(logits / 0.5) over the two real tokens: probabilities 1/10 and 9/10.
    torch.testing.assert_close(logprobs, torch.tensor([math.log(0.9)]))
    torch.testing.assert_close(entropy, torch.tensor([-(0.1 * math.log(0.1) + 0.9 * math.log(0.9))]))


def test_logprobs_gradient_equals_log_softmax_gradient():
    torch.manual_seed(0)
    logits = torch.randn(5, 7, requires_grad=True)
    targets = torch.tensor([0, 6, 3, 3, 1])
    logprobs, _ = vocab_parallel_logprobs(logits, targets, vocab_start=0, vocab_size=7)
    logprobs.sum().backward()
    reference = logits.detach().clone().requires_grad_()
    reference.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).sum().backward()
    torch.testing.assert_close(logits.grad, reference.grad)
