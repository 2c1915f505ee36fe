"""The SFT stage's demonstration file: row formats, row errors with file and line, the seeded order."""

import json

import numpy as np
import pytest

from slime_rl.buffer.demonstrations import DemonstrationDataset
from slime_rl.config import SFTConfig, load_config
from slime_rl.errors import ConfigError, DataError
from slime_rl.toy.tokenizer import make_char_tokenizer

TOKENIZER = make_char_tokenizer()  # ids: pad 0, bos 1, eos 2; one id per character


def _write(tmp_path, rows: list) -> str:
    path = tmp_path / "sft.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_text_row_trains_the_response_and_eos_only(tmp_path):
    data = DemonstrationDataset(_write(tmp_path, [{"prompt": "1+2=", "response": "3"}]), TOKENIZER, seed=0)
    (sample,) = data.batch(0, 1)
    assert sample.prompt_ids.tolist() == TOKENIZER("1+2=")["input_ids"]  # BOS, then one id per character
    assert len(sample.prompt_ids) == 5
    assert sample.response_ids.tolist() == [TOKENIZER.convert_tokens_to_ids("3"), TOKENIZER.eos_token_id]
    assert sample.loss_mask.tolist() == [1, 1]
    assert sample.weight_spans == [(0, 0, 2)]


def test_segment_row_leaves_tool_output_untrained(tmp_path):
    response = [{"text": "<t>6*7</t>"}, {"text": "<r>42</r>", "train": False}, {"text": "<a>42</a>", "train": True}]
    data = DemonstrationDataset(_write(tmp_path, [{"prompt": "6*7=", "response": response}]), TOKENIZER, seed=0)
    (sample,) = data.batch(0, 1)
    text = "<t>6*7</t><r>42</r><a>42</a>"
    assert sample.response_ids.tolist() == [
        *TOKENIZER(text, add_special_tokens=False)["input_ids"],
        TOKENIZER.eos_token_id,
    ]
    # 10 policy tokens, 9 tool tokens (mask 0, log-prob 0, in no span), 9 policy tokens + EOS
    assert sample.loss_mask.tolist() == [1] * 10 + [0] * 9 + [1] * 10
    assert sample.weight_spans == [(0, 0, 10), (0, 19, 29)]  # the policy's spans skip the tool's tokens


def test_token_id_row_is_used_as_given(tmp_path):
    data = DemonstrationDataset(_write(tmp_path, [{"prompt_ids": [1, 20], "response_ids": [21, 2]}]), TOKENIZER, seed=0)
    (sample,) = data.batch(0, 1)
    assert (sample.prompt_ids.tolist(), sample.response_ids.tolist()) == ([1, 20], [21, 2])


def test_batches_cross_passes_and_each_pass_takes_every_row_once(tmp_path):
    rows = [{"prompt": f"{i}=", "response": str(i)} for i in range(5)]
    data = DemonstrationDataset(_write(tmp_path, rows), TOKENIZER, seed=3)
    # 4 steps of 5 = passes 0..3, each a permutation of the 5 rows
    firsts = [TOKENIZER.decode(s.prompt_ids, skip_special_tokens=True) for k in range(4) for s in data.batch(k, 5)]
    for p in range(4):
        assert sorted(firsts[5 * p : 5 * p + 5]) == [f"{i}=" for i in range(5)]
    # step 1 of size 3 = rows 3..5: the last two of pass 0, the first of pass 1
    order0, order1 = data.order(0), data.order(1)
    expected = [int(order0[3]), int(order0[4]), int(order1[0])]
    got = [int(TOKENIZER.decode(s.prompt_ids, skip_special_tokens=True)[0]) for s in data.batch(1, 3)]
    assert got == expected
    same_seed = DemonstrationDataset(_write(tmp_path, rows), TOKENIZER, seed=3)
    np.testing.assert_array_equal(same_seed.order(2), data.order(2))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"sft.jsonl:2: invalid JSON"),
        ('{"prompt": "1="}', r"sft.jsonl:2: a demonstration needs keys \['prompt', 'response'\] or"),
        ('{"prompt": "", "response": "1"}', r"sft.jsonl:2: 'prompt' must be a non-empty string"),
        ('{"prompt": "1=", "response": 1}', r"sft.jsonl:2: 'response' must be a non-empty string"),
        ('{"prompt_ids": [1], "response_ids": []}', r"sft.jsonl:2: 'response_ids' must be a non-empty list"),
        ('{"prompt_ids": [1, 999], "response_ids": [2]}', r"sft.jsonl:2: 'prompt_ids' holds token id 999"),
        ("[1, 2]", r"sft.jsonl:2: a demonstration needs keys .* got list"),
        ('{"prompt": "1=", "response": []}', r"sft.jsonl:2: 'response' must be a non-empty string or a list"),
        ('{"prompt": "1=", "response": [{"text": "1", "train": 0}]}', r"sft.jsonl:2: response segment 0 must be"),
        ('{"prompt": "1=", "response": [{"txt": "1"}]}', r"sft.jsonl:2: response segment 0 must be"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, line, message):
    path = _write(tmp_path, [{"prompt": "1=", "response": "1"}, line])
    with pytest.raises(DataError, match=message):
        DemonstrationDataset(path, TOKENIZER, seed=0)


def test_missing_or_empty_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist; check sft.path"):
        DemonstrationDataset(tmp_path / "none.jsonl", TOKENIZER, seed=0)
    with pytest.raises(DataError, match="no demonstrations"):
        DemonstrationDataset(_write(tmp_path, [""]), TOKENIZER, seed=0)


def test_sft_config_checks_name_the_key():
    with pytest.raises(ConfigError, match=r"sft.steps=5 needs sft.path"):
        SFTConfig(steps=5)
    with pytest.raises(ConfigError, match="sft.batch_size must be >= 1"):
        SFTConfig(batch_size=0)
    with pytest.raises(ConfigError, match="sft.lr must be > 0"):
        SFTConfig(lr=0.0)
    assert load_config([]).sft == SFTConfig()  # off by default
