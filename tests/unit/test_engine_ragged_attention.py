"""Bucketed decode attention: the plan splits only when it pays, and gives padded SDPA's numbers."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from slime_rl.engines.native import ragged_attention
from slime_rl.engines.native.ragged_attention import plan_buckets, ragged_sdpa_forward
from slime_rl.engines.native.runner import ModelRunner
from slime_rl.toy.model import make_toy_model

CPU = torch.device("cpu")


def test_similar_lengths_stay_one_padded_batch():
    assert plan_buckets([5, 40, 64, 12], CPU) is None
    assert plan_buckets([70, 130, 75, 120], CPU) is None  # padding 2 rows by 60 costs less than a bucket


def test_one_long_row_among_many_short_ones_gets_its_own_bucket():
    lengths = [41] * 95 + [501]
    buckets = plan_buckets(lengths, CPU)
    assert [b.attend_len for b in buckets] == [41, 501]
    assert sorted(r for b in buckets for r in b.rows.tolist()) == list(range(96))
    for bucket in buckets:
        assert max(lengths[r] for r in bucket.rows.tolist()) == bucket.attend_len


def test_bucketed_attention_equals_padded_sdpa_with_grouped_query_heads():
    torch.manual_seed(0)
    lengths = [3] * 40 + [200, 90, 7, 500]
    batch, heads, kv_heads, dim, longest = len(lengths), 4, 2, 16, max(lengths)
    query = torch.randn(batch, heads, 1, dim)
    key, value = torch.randn(batch, kv_heads, longest, dim), torch.randn(batch, kv_heads, longest, dim)
    beyond = torch.arange(longest)[None, :] >= torch.tensor(lengths)[:, None]
    mask = torch.zeros(batch, 1, 1, longest).masked_fill_(beyond[:, None, None, :], torch.finfo(torch.float32).min)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = heads // kv_heads, False
    buckets = plan_buckets(lengths, CPU)
    assert buckets is not None and len(buckets) >= 2
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=dim**-0.5)
    got, _ = ragged_sdpa_forward(module, query, key, value, mask, decode_buckets=buckets, scaling=dim**-0.5)
    torch.testing.assert_close(got, expected)


def test_runner_decode_over_ragged_rows_matches_a_full_forward(tmp_path, monkeypatch):
    model_dir = make_toy_model(tmp_path / "model", seed=0, max_position_embeddings=512)
    runner = ModelRunner(str(model_dir), device="cpu", dtype=torch.float32, num_slots=24, max_len=512)
    prompts = [[1] + [4 + (7 * i + j) % 90 for j in range(6 + i % 12)] for i in range(20)]
    prompts.append([1] + [4 + j % 90 for j in range(399)])  # one row 400 long: the plan splits it off
    assert plan_buckets([len(p) + 1 for p in prompts], CPU) is not None
    for row, prompt in enumerate(prompts):
        runner.prefill(row, [prompt])
    key_lengths = []

    def recording_sdpa(module, query, key, *args, **kwargs):
        key_lengths.append(key.shape[2])
        return sdpa_attention_forward(module, query, key, *args, **kwargs)

    monkeypatch.setattr(ragged_attention, "sdpa_attention_forward", recording_sdpa)
    logits = runner.decode([5] * len(prompts), [len(p) for p in prompts])
    assert sorted(set(key_lengths)) == [19, 401]  # each layer attends per bucket, not 21 rows x 401 keys
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = torch.stack([reference(torch.tensor([p + [5]])).logits[0, -1] for p in prompts])
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


def test_devices_without_a_measured_bucket_cost_keep_one_padded_batch():
    assert plan_buckets([41] * 95 + [501], torch.device("cuda")) is None


def test_causal_prefill_of_right_padded_prompts_matches_each_prompt_alone(tmp_path):
    model_dir = make_toy_model(tmp_path / "model", seed=1)
    runner = ModelRunner(str(model_dir), device="cpu", dtype=torch.float32, num_slots=4, max_len=128)
    prompts = [[1, 7, 8], [1] + list(range(10, 60)), [1, 9, 30, 31, 32, 33]]
    logits = runner.prefill(0, prompts)  # one forward, padded to 51 tokens
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected = torch.stack([reference(torch.tensor([p])).logits[0, -1] for p in prompts])
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
