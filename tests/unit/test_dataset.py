"""Prompt datasets: JSONL and Parquet, bad rows, the length filter, the context check and the per-epoch order."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from slime_rl.buffer.dataset import Cursor, PromptDataset
from slime_rl.config.buffer import DataConfig
from slime_rl.errors import ConfigError, DataError

WORDS = ["<unk>", "<s>", "user:", "assistant:", "what", "is", "2+2", "one", "two", "three", "four"]


@pytest.fixture(scope="module")
def tokenizer():
    """A whitespace word-level tokenizer: token id = position in WORDS."""
    model = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=model, unk_token="<unk>", bos_token="<s>")
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return tok


def write_jsonl(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def load(path, tokenizer, n=2, seed=0, context_len=None, max_new_tokens=0, **cfg) -> PromptDataset:
    return PromptDataset(
        DataConfig(path=path, **cfg),
        tokenizer,
        n_samples_per_prompt=n,
        seed=seed,
        context_len=context_len,
        max_new_tokens=max_new_tokens,
    )


def test_dataset_reads_jsonl_rows_into_pending_groups(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [json.dumps({"prompt": "what is 2+2", "label": 4, "src": "x"})])

    dataset = load(path, tokenizer, n=3, metadata_keys=["src"])
    group = dataset.make_group(0)

    assert len(dataset) == 1
    assert len(group.samples) == 3
    assert group.samples[0].prompt_ids.tolist() == [4, 5, 6]
    assert [s.label for s in group.samples] == ["4", "4", "4"]  # non-string labels are JSON-encoded
    assert group.samples[2].metadata == {"src": "x"}
    assert len({s.uid for s in group.samples}) == 3 and len(group.group_id) == 32
    assert not group.is_finished


def test_dataset_applies_chat_template_to_strings_and_messages(tmp_path, tokenizer):
    messages = [{"role": "system", "content": "one"}, {"role": "user", "content": "two"}]
    path = write_jsonl(tmp_path / "p.jsonl", [json.dumps({"prompt": "three"}), json.dumps({"prompt": messages})])

    dataset = load(path, tokenizer, label_key=None, shuffle=False, apply_chat_template=True)

    assert dataset.make_group(0).samples[0].prompt_ids.tolist() == [2, 9, 3]  # user: three assistant:
    assert dataset.make_group(1).samples[0].prompt_ids.tolist() == [0, 7, 2, 8, 3]  # "system:" is unknown


def test_dataset_chat_template_needs_a_template(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [json.dumps({"prompt": "one"})])
    plain = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, unk_token="<unk>")

    with pytest.raises(ConfigError, match="no chat template"):
        load(path, plain, label_key=None, apply_chat_template=True)


def test_dataset_reads_parquet(tmp_path, tokenizer):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"question": ["one two", "three"], "answer": ["a", "b"], "id": [7, 8]}), path)

    dataset = load(str(path), tokenizer, prompt_key="question", label_key="answer", metadata_keys=["id"], shuffle=False)

    assert [dataset.make_group(i).samples[0].prompt_ids.tolist() for i in range(2)] == [[7, 8], [9]]
    assert dataset.make_group(1).samples[0].metadata == {"id": 8}


def test_dataset_parquet_missing_column_names_file_and_column(tmp_path, tokenizer):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["one"]}), path)

    with pytest.raises(DataError, match=r"p\.parquet: no column \['label'\]"):
        load(str(path), tokenizer)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"label": "x"}', "missing prompt key 'prompt'"),
        ('{"prompt": 3, "label": "x"}', "non-empty string"),
        ('{"prompt": "one"}', "missing or null label 'label'"),
    ],
)
def test_dataset_malformed_row_error_names_file_and_line(tmp_path, tokenizer, line, problem):
    good = json.dumps({"prompt": "one", "label": "1"})
    path = write_jsonl(tmp_path / "bad.jsonl", [good, "", line])

    with pytest.raises(DataError, match=rf"bad\.jsonl:3: .*{problem}.*on_bad_row=skip"):
        load(path, tokenizer)


def test_dataset_skips_and_counts_malformed_rows_when_asked(tmp_path, tokenizer):
    good = json.dumps({"prompt": "one", "label": "1"})
    path = write_jsonl(tmp_path / "bad.jsonl", [good, "{oops", '{"prompt": "two"}', good])

    dataset = load(path, tokenizer, on_bad_row="skip")

    assert len(dataset) == 2
    assert dataset.num_bad_rows == 2


def test_dataset_filters_long_prompts_and_counts_them(tmp_path, tokenizer):
    rows = [{"prompt": p, "label": "x"} for p in ["one", "one two three", "two three"]]
    path = write_jsonl(tmp_path / "p.jsonl", [json.dumps(r) for r in rows])

    dataset = load(path, tokenizer, max_prompt_tokens=2, shuffle=False)

    assert len(dataset) == 2
    assert dataset.num_filtered_long == 1
    assert dataset.make_group(1).samples[0].prompt_ids.tolist() == [8, 9]


def test_dataset_with_no_usable_rows_says_why(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [json.dumps({"prompt": "one two", "label": "x"})])

    with pytest.raises(DataError, match="1 longer than max_prompt_tokens"):
        load(path, tokenizer, max_prompt_tokens=1)


def test_dataset_prompt_over_context_error_names_file_and_line(tmp_path, tokenizer):
    rows = [json.dumps({"prompt": p, "label": "x"}) for p in ["one two", "one two three"]]
    path = write_jsonl(tmp_path / "long.jsonl", [rows[0], "", rows[1]])

    # "one two" is 2 tokens: 2 + 3 = 5 fits a context of 5; "one two three" needs 3 + 3 = 6 on line 3.
    with pytest.raises(DataError, match=r"long\.jsonl:3: prompt has 3 tokens.*3 \+ 3 = 6 > 5 .*on_bad_row=skip"):
        load(path, tokenizer, context_len=5, max_new_tokens=3)


def test_dataset_skips_and_counts_prompts_over_context_when_asked(tmp_path, tokenizer):
    rows = [{"prompt": p, "label": "x"} for p in ["one two three", "one two", "two three four"]]
    path = write_jsonl(tmp_path / "p.jsonl", [json.dumps(r) for r in rows])

    dataset = load(path, tokenizer, shuffle=False, on_bad_row="skip", context_len=5, max_new_tokens=3)

    assert len(dataset) == 1
    assert dataset.num_over_context == 2 and dataset.num_bad_rows == 0
    assert dataset.make_group(0).samples[0].prompt_ids.tolist() == [7, 8]


def test_dataset_prompt_filling_the_context_is_refused_even_with_no_new_tokens(tmp_path, tokenizer):
    # SGLang refuses an input of `context` tokens outright: nothing could be generated after it.
    rows = [{"prompt": p, "label": "x"} for p in ["one two", "one two three"]]
    path = write_jsonl(tmp_path / "p.jsonl", [json.dumps(r) for r in rows])

    dataset = load(path, tokenizer, on_bad_row="skip", context_len=3, max_new_tokens=0)

    assert len(dataset) == 1 and dataset.num_over_context == 1


def test_dataset_with_only_prompts_over_context_says_why(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [json.dumps({"prompt": "one two", "label": "x"})])

    with pytest.raises(DataError, match="1 over the engines' context"):
        load(path, tokenizer, on_bad_row="skip", context_len=4, max_new_tokens=3)


def test_dataset_order_is_a_seeded_permutation_per_epoch(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [json.dumps({"prompt": "one", "label": str(i)}) for i in range(20)])

    first, again = load(path, tokenizer, seed=3), load(path, tokenizer, seed=3)

    assert first.order(0).tolist() == again.order(0).tolist()
    assert sorted(first.order(0).tolist()) == list(range(20))
    assert first.order(0).tolist() != first.order(1).tolist()
    assert load(path, tokenizer, shuffle=False).order(5).tolist() == list(range(20))


def test_dataset_take_crosses_epochs(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [json.dumps({"prompt": "one", "label": str(i)}) for i in range(3)])
    dataset = load(path, tokenizer, shuffle=False)

    groups, cursor = dataset.take(Cursor(0, 2), 3)

    assert [g.samples[0].label for g in groups] == ["2", "0", "1"]
    assert cursor == Cursor(1, 2)
