"""Vectorised sampling: greedy, top-k/top-p filtering, seeded rows and the reported log-probs."""

from __future__ import annotations

import torch

from slime_rl.engines.native.sampling import make_row_sampling, sample

LOGITS = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 0.5]])


def test_greedy_rows_take_argmax_and_report_model_logprob():
    rows = make_row_sampling([0.0, 0.0], [1.0, 1.0], [-1, -1], [None, None], "cpu")
    tokens, logprobs = sample(LOGITS, rows)
    assert tokens.tolist() == [0, 1]
    torch.testing.assert_close(logprobs, LOGITS.log_softmax(-1)[[0, 1], [0, 1]])


def test_top_k_one_and_tiny_top_p_sample_the_argmax_with_logprob_zero():
    rows = make_row_sampling([1.0, 1.0], [1.0, 0.01], [1, -1], [None, None], "cpu")
    tokens, logprobs = sample(LOGITS, rows, torch.Generator().manual_seed(0))
    assert tokens.tolist() == [0, 1]
    torch.testing.assert_close(logprobs, torch.zeros(2))


def test_temperature_one_logprob_is_model_log_softmax_and_seeded_rows_repeat():
    def draw():
        gens = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)]
        rows = make_row_sampling([1.0, 1.0], [1.0, 1.0], [-1, -1], gens, "cpu")
        return sample(LOGITS, rows)

    tokens, logprobs = draw()
    torch.testing.assert_close(logprobs, LOGITS.log_softmax(-1).gather(-1, tokens[:, None])[:, 0])
    assert draw()[0].tolist() == tokens.tolist()


def test_top_p_renormalises_over_kept_tokens():
    # Row probs ~ [0.64, 0.24, 0.09, 0.03]: top_p=0.8 keeps the first two tokens.
    rows = make_row_sampling([1.0], [0.8], [-1], [None], "cpu")
    kept = LOGITS[:1, :2].log_softmax(-1)[0]
    for seed in range(20):
        token, logprob = sample(LOGITS[:1], rows, torch.Generator().manual_seed(seed))
        assert token.item() in (0, 1)
        torch.testing.assert_close(logprob[0], kept[token.item()])
