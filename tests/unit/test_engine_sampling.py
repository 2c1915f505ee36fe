"""Vectorised sampling: greedy, top-k/top-p filtering, seeded rows and the reported log-probs."""

from __future__ import annotations

import torch

from slime_rl.engines.native.sampling import hashed_uniform, make_row_sampling, sample

LOGITS = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 0.5]])


def test_greedy_rows_take_argmax_and_report_model_logprob():
    rows = make_row_sampling([0.0, 0.0], [1.0, 1.0], [-1, -1], [None, None], [0, 0], "cpu")
    tokens, logprobs = sample(LOGITS, rows)
    assert tokens.tolist() == [0, 1]
    torch.testing.assert_close(logprobs, LOGITS.log_softmax(-1)[[0, 1], [0, 1]])


def test_top_k_one_and_tiny_top_p_sample_the_argmax_with_logprob_zero():
    rows = make_row_sampling([1.0, 1.0], [1.0, 0.01], [1, -1], [None, None], [0, 0], "cpu")
    tokens, logprobs = sample(LOGITS, rows, torch.Generator().manual_seed(0))
    assert tokens.tolist() == [0, 1]
    torch.testing.assert_close(logprobs, torch.zeros(2))


def test_temperature_one_logprob_is_model_log_softmax_and_seeded_rows_repeat():
    def draw(shared_seed: int):
        rows = make_row_sampling([1.0, 1.0], [1.0, 1.0], [-1, -1], [7, 8], [0, 0], "cpu")
        return sample(LOGITS, rows, torch.Generator().manual_seed(shared_seed))

    tokens, logprobs = draw(0)
    torch.testing.assert_close(logprobs, LOGITS.log_softmax(-1).gather(-1, tokens[:, None])[:, 0])
    assert draw(1)[0].tolist() == tokens.tolist()  # seeded rows ignore the shared generator


def test_seeded_row_draws_the_same_token_whatever_shares_its_batch():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    alone = make_row_sampling([1.0], [1.0], [-1], [11], [5], "cpu")
    mixed = make_row_sampling([1.0] * 3, [1.0] * 3, [-1] * 3, [None, 3, 11], [0, 9, 5], "cpu")
    for shared_seed in range(5):
        token = sample(logits[2:3], alone, torch.Generator().manual_seed(shared_seed))[0]
        batch = sample(logits[:3], mixed)[0]  # row 2 has the same logits, seed and counter
        assert batch[2] == token[0]


def splitmix64_uniform(seed: int, counter: int, vocab_id: int) -> float:
    """Pure-Python reference of `hashed_uniform` for one entry (unsigned 64-bit arithmetic)."""
    mask = (1 << 64) - 1
    key = (seed * 0x9E3779B97F4A7C15 + counter * 0xD1B54A32D192ED03 + vocab_id * 0x9E3779B97F4A7C15) & mask
    key = ((key ^ (key >> 30)) * 0xBF58476D1CE4E5B9) & mask
    key = ((key ^ (key >> 27)) * 0x94D049BB133111EB) & mask
    key ^= key >> 31
    return ((key >> 11) + 0.5) / (1 << 53)


def test_hashed_uniform_matches_splitmix64_reference_and_is_uniform():
    seeds, counters = torch.tensor([0, 1, 2**40 + 3, 123456789]), torch.tensor([0, 7, 1, 2**33])
    noise = hashed_uniform(seeds, counters, 64)
    for row, (seed, counter) in enumerate(zip(seeds.tolist(), counters.tolist(), strict=True)):
        for vocab_id in (0, 1, 63):
            assert noise[row, vocab_id].item() == splitmix64_uniform(seed, counter, vocab_id)
    big = hashed_uniform(torch.arange(64), torch.zeros(64, dtype=torch.int64), 1000).flatten()
    assert big.min() > 0.0 and big.max() < 1.0
    counts = torch.histc(big.float(), bins=10, min=0.0, max=1.0)
    assert (counts - big.numel() / 10).abs().max() < 0.02 * big.numel()  # 64k draws: deciles within 2%


def test_top_p_renormalises_over_kept_tokens():
    # Row probs ~ [0.64, 0.24, 0.09, 0.03]: top_p=0.8 keeps the first two tokens.
    rows = make_row_sampling([1.0], [0.8], [-1], [None], [0], "cpu")
    kept = LOGITS[:1, :2].log_softmax(-1)[0]
    for seed in range(20):
        token, logprob = sample(LOGITS[:1], rows, torch.Generator().manual_seed(seed))
        assert token.item() in (0, 1)
        torch.testing.assert_close(logprob[0], kept[token.item()])
