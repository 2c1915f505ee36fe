"""The toy experiment through the public hooks: its prepare hook, its settings in `prepare.args`, its rewards."""

import json

import pytest

from slime_rl.config import load_config
from slime_rl.errors import ConfigError
from slime_rl.toy.config import toy_config
from slime_rl.toy.experiment import DemonstrationStyle, prepare, write_demonstrations
from slime_rl.toy.tasks import make_rows

SMALL = ["prepare.args.hidden_size=16", "prepare.args.num_layers=1", "prepare.args.num_train_prompts=10"]


def test_toy_preset_uses_the_public_hooks():
    cfg = load_config(["experiment=toy", "prepare.args.task=reversal"])
    assert cfg.prepare.path == "slime_rl.toy.experiment:prepare"
    assert (cfg.rollout.reward.kind, cfg.rollout.reward.path) == ("custom", "slime_rl.toy.rewards:reversal")
    assert cfg.sft.path == "outputs/toy/data/sft.jsonl" and cfg.sft.steps > 0


def test_prepare_writes_model_data_and_the_demonstrations_the_sft_stage_takes(tmp_path):
    cfg = load_config(["experiment=toy", f"output_dir={tmp_path}", *SMALL, "sft.steps=3", "sft.batch_size=8"])
    prepare(cfg)
    data = tmp_path / "toy" / "data"
    assert (tmp_path / "toy" / "toy_model" / "config.json").is_file()
    assert len((data / "train.jsonl").read_text().splitlines()) == 10
    assert len((data / "eval.jsonl").read_text().splitlines()) == 256
    demos = [json.loads(line) for line in (data / "sft.jsonl").read_text().splitlines()]
    assert len(demos) == 30  # 3 steps x 8 = 24 demonstrations, rounded up to whole passes over the 10 prompts
    assert [d["prompt"] for d in demos[:10]] == [r["prompt"] for r in make_rows("addition", 10, cfg.seed)]
    before = (data / "sft.jsonl").stat().st_mtime_ns
    prepare(cfg)  # idempotent: a resumed run keeps its files
    assert (data / "sft.jsonl").stat().st_mtime_ns == before


def test_prepare_without_sft_steps_writes_no_demonstrations(tmp_path):
    prepare(load_config(["experiment=toy", f"output_dir={tmp_path}", *SMALL, "sft.steps=0", "eval.path=null"]))
    assert sorted(p.name for p in (tmp_path / "toy" / "data").iterdir()) == ["train.jsonl"]


def test_demonstrations_draw_distractors_per_demonstration(tmp_path):
    cfg = load_config(["experiment=toy", "prepare.args.distractor_prob=0.5"])
    rows = make_rows("addition", 50, 0)
    style = DemonstrationStyle.of(cfg, toy_config(cfg.prepare.args))
    path = write_demonstrations(tmp_path / "sft.jsonl", rows, style, num_demonstrations=1000)
    demos = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(demos) == 1000  # 20 passes over 50 prompts
    assert all(d["response"] in (r["label"], r["label"] + ".") for d, r in zip(demos, rows * 20, strict=True))
    sloppy = sum(d["response"].endswith(".") for d in demos)
    assert 400 < sloppy < 600  # Binomial(1000, 0.5): 6 standard deviations either side
    by_prompt = {d["prompt"]: set() for d in demos}
    for d in demos:
        by_prompt[d["prompt"]].add(d["response"])
    assert sum(len(endings) == 2 for endings in by_prompt.values()) > 40  # both endings for most prompts


def test_tool_demonstrations_call_the_calculator_and_leave_its_result_untrained(tmp_path):
    cfg = load_config(["experiment=toy_tool", f"output_dir={tmp_path}", *SMALL, "sft.steps=50", "sft.batch_size=20"])
    prepare(cfg)
    demos = [json.loads(line) for line in (tmp_path / "toy_tool" / "data" / "sft.jsonl").read_text().splitlines()]
    assert len(demos) == 1000
    rows = make_rows("multiplication", 10, cfg.seed)
    called = 0
    for demo, row in zip(demos, rows * 100, strict=True):
        expression, label = row["prompt"].removesuffix("="), row["label"]
        if len(demo["response"]) == 3:
            called += 1
            assert demo["response"] == [
                {"text": f"<tool>calculator: {expression}</tool>"},
                {"text": f"<result>{label}</result>", "train": False},
                {"text": f"<answer>{label}</answer>"},
            ]
        else:
            assert demo["response"] == [{"text": f"<answer>{label}</answer>"}]
    assert 175 < called < 325  # Binomial(1000, 0.25): 250 +- 5.5 standard deviations


def test_abstain_demonstrations_abstain_or_make_an_answer_up(tmp_path):
    cfg = load_config(["experiment=toy_abstain", f"output_dir={tmp_path}", *SMALL, "prepare.args.num_train_prompts=40"])
    cfg.sft.steps, cfg.sft.batch_size = 100, 40
    prepare(cfg)
    data = tmp_path / "toy_abstain" / "data"
    demos = [json.loads(line) for line in (data / "sft.jsonl").read_text().splitlines()]
    unanswerable = [d for d in demos if "?" in d["prompt"]]
    abstained = sum(d["response"] == "unknown" for d in unanswerable)
    assert unanswerable and all(d["response"] == "unknown" or d["response"].isdigit() for d in unanswerable)
    assert 0.1 < abstained / len(unanswerable) < 0.3  # abstain_demo_prob=0.2
    eval_rows = [json.loads(line) for line in (data / "eval.jsonl").read_text().splitlines()]
    assert all((row["label"] == "unknown") == ("?" in row["prompt"]) for row in eval_rows)
    assert 0.15 < sum("?" in row["prompt"] for row in eval_rows) / len(eval_rows) < 0.35  # unanswerable_prob=0.25


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"tsk": "addition"}, r"unknown key\(s\) prepare.args.tsk of experiment=toy"),
        ({"task": "division"}, r"prepare.args.task='division' is unknown"),
        ({"hidden_size": 1.5}, r"prepare.args.hidden_size=1.5 must be a int"),
        ({"distractor_prob": 2}, r"prepare.args.distractor_prob must be in \[0, 1\]"),
        ({"unanswerable_prob": 0.5, "task": "reversal"}, r"prepare.args.unanswerable_prob=0.5 needs an arithmetic"),
    ],
)
def test_toy_settings_are_checked_with_their_full_key(args, message):
    with pytest.raises(ConfigError, match=message):
        toy_config(args)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["prepare.args.tool_demo_prob=0.5"], r"tool_demo_prob=0.5 needs rollout.generate.kind=multi_turn"),
        (["experiment=toy_tool", "~tools.registered.calculator"], r"tools.registered has none; add tools.registered"),
        (["prepare.args.unanswerable_prob=0.2"], r"only rollout.reward.kind=reliability scores; set it"),
    ],
)
def test_prepare_refuses_settings_the_run_would_not_score(tmp_path, overrides, message):
    cfg = load_config(["experiment=toy", f"output_dir={tmp_path}", *SMALL, *overrides])
    with pytest.raises(ConfigError, match=message):
        prepare(cfg)
    assert not (tmp_path / "toy").exists()  # refused before anything was written


def test_prepare_needs_a_prompt_file(tmp_path):
    cfg = load_config(["prepare.path=slime_rl.toy.experiment:prepare", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="needs buffer.data.path; experiment=toy sets it"):
        prepare(cfg)
