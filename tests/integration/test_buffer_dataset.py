"""fill_prompts against a real embedded Redis: the cursor lives in Redis and a resumed run continues."""

from __future__ import annotations

import json
import uuid

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from slime_rl.buffer.dataset import PromptDataset, fill_prompts, load_cursor
from slime_rl.buffer.store import RedisBuffer
from slime_rl.config.buffer import DataConfig
from slime_rl.errors import DataError


@pytest.fixture(scope="module")
def tokenizer():
    model = Tokenizer(models.WordLevel({"<unk>": 0, "row": 1}, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=model, unk_token="<unk>")


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": "row", "label": str(i)}) + "\n" for i in range(5)))
    return str(path)


@pytest.fixture
def buffer(redis_url):
    buf = RedisBuffer.from_url(redis_url, f"test-{uuid.uuid4().hex}")
    yield buf
    buf.clear()
    buf.client.close()


def dataset(path, tokenizer, seed=7):
    return PromptDataset(DataConfig(path=path), tokenizer, n_samples_per_prompt=2, seed=seed)


def labels(groups):
    return [g.samples[0].label for g in groups]


def test_fill_prompts_tops_up_to_min_groups(buffer, prompt_file, tokenizer):
    data = dataset(prompt_file, tokenizer)

    assert fill_prompts(buffer, data, min_groups=3) == 3
    assert fill_prompts(buffer, data, min_groups=3) == 0
    buffer.take_groups(2)
    assert fill_prompts(buffer, data, min_groups=3) == 2

    assert buffer.queue_lengths()["prompts"] == 3
    assert buffer.snapshot()["dataset_offset"] == 0  # 5 rows issued: epoch 1 starts
    assert buffer.snapshot()["dataset_epoch"] == 1


def test_resumed_run_continues_where_the_last_one_stopped(buffer, prompt_file, tokenizer, redis_url):
    reference = dataset(prompt_file, tokenizer)
    expected = [str(int(i)) for i in [*reference.order(0), *reference.order(1)]]

    fill_prompts(buffer, dataset(prompt_file, tokenizer), min_groups=3)
    first = labels(buffer.take_groups(3))
    # The process dies here; a new one loads the dataset again and refills from the stored cursor.
    resumed = RedisBuffer.from_url(redis_url, buffer.run_id)
    fill_prompts(resumed, dataset(prompt_file, tokenizer), min_groups=7)
    rest = labels(resumed.take_groups(7))

    assert first + rest == expected
    resumed.client.close()


def test_resume_with_another_seed_is_refused(buffer, prompt_file, tokenizer):
    fill_prompts(buffer, dataset(prompt_file, tokenizer, seed=7), min_groups=1)

    with pytest.raises(DataError, match="same data, seed"):
        load_cursor(buffer, dataset(prompt_file, tokenizer, seed=8))
