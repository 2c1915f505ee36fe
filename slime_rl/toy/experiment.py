"""Materialise the toy experiments on disk: the model directory, the train/eval datasets and the SFT
demonstrations (plain; multi-turn, some calling the calculator, for `experiment=toy_tool`; some abstaining on
unanswerable prompts for `experiment=toy_abstain`). The toy presets run it as the `prepare` hook
(`prepare.path=slime_rl.toy.experiment:prepare`) with its settings in `prepare.args` (`toy.config.ToyConfig`).

Idempotent: files that exist are kept, so a resumed run reuses its model and data.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slime_rl.config.root import SlimeRLConfig
from slime_rl.config.tools import ToolsConfig
from slime_rl.errors import ConfigError
from slime_rl.rollout.tools.base import ToolResult
from slime_rl.rollout.tools.calculator import evaluate
from slime_rl.rollout.tools.tool_call import format_result
from slime_rl.toy.config import ToyConfig, toy_config
from slime_rl.toy.model import make_toy_model
from slime_rl.toy.tasks import MISSING, demonstration, fabricated_answer, make_rows, write_dataset

logger = logging.getLogger(__name__)

_EVAL_SEED_OFFSET = 1_000_003  # eval rows come from a different seed than training rows


def prepare(cfg: SlimeRLConfig) -> None:
    """The `prepare` hook: write the toy model to `model.path`, the datasets to `buffer.data.path` and
    `eval.path` (if set) and the demonstrations to `sft.path` (if set, with `sft.steps`), each unless present."""
    toy = toy_config(cfg.prepare.args)
    if not cfg.buffer.data.path:
        raise ConfigError("the toy experiment (prepare.path) needs buffer.data.path; experiment=toy sets it")
    style = DemonstrationStyle.of(cfg, toy)  # checks the tool and abstain settings before anything is written
    model_path = Path(cfg.model.path)
    if not (model_path / "config.json").is_file():
        make_toy_model(model_path, arch=toy.arch, hidden_size=toy.hidden_size, num_layers=toy.num_layers, seed=cfg.seed)
    train_path = Path(cfg.buffer.data.path)
    train_rows = toy_rows(cfg, toy, toy.num_train_prompts, cfg.seed)  # the prompts, and what SFT demonstrates
    if not train_path.is_file():
        write_dataset(train_path, train_rows)
    if cfg.eval.path and not Path(cfg.eval.path).is_file():
        write_dataset(cfg.eval.path, toy_rows(cfg, toy, toy.num_eval_prompts, cfg.seed + _EVAL_SEED_OFFSET))
    if cfg.sft.path and cfg.sft.steps and not Path(cfg.sft.path).is_file():
        num_demonstrations = cfg.sft.steps * cfg.sft.batch_size
        write_demonstrations(Path(cfg.sft.path), train_rows, style, num_demonstrations=num_demonstrations)
    logger.info("toy %s task: model %s, data %s", toy.task, model_path, train_path.parent)


def toy_rows(cfg: SlimeRLConfig, toy: ToyConfig, num_rows: int, seed: int) -> list[dict[str, str]]:
    """The toy's prompt rows; unanswerable ones are labelled with the reliability reward's abstain answer."""
    abstain_answer = cfg.rollout.reward.reliability.abstain_answer
    return make_rows(toy.task, num_rows, seed, unanswerable_prob=toy.unanswerable_prob, abstain_answer=abstain_answer)


@dataclass(frozen=True)
class DemonstrationStyle:
    """How the toy's demonstrations answer: plain (single-turn) or in the multi-turn tags, maybe via the calculator."""

    toy: ToyConfig
    seed: int
    abstain_answer: str
    tools: ToolsConfig | None = None  # the tag format, for rollout.generate.kind=multi_turn
    calculator: str | None = None  # the name the policy calls the calculator by

    @classmethod
    def of(cls, cfg: SlimeRLConfig, toy: ToyConfig) -> DemonstrationStyle:
        """The style `cfg` trains in; a toy setting the run would not generate or score is a ConfigError."""
        abstain_answer = cfg.rollout.reward.reliability.abstain_answer
        if toy.unanswerable_prob and cfg.rollout.reward.kind != "reliability":
            raise ConfigError(
                f"prepare.args.unanswerable_prob={toy.unanswerable_prob} labels prompts {abstain_answer!r}, which "
                "only rollout.reward.kind=reliability scores; set it (experiment=toy_abstain does)"
            )
        if cfg.rollout.generate.kind != "multi_turn":
            if toy.tool_demo_prob:
                raise ConfigError(
                    f"prepare.args.tool_demo_prob={toy.tool_demo_prob} needs rollout.generate.kind=multi_turn "
                    "(experiment=toy_tool sets it)"
                )
            return cls(toy, cfg.seed, abstain_answer)
        names = [name for name, spec in cfg.tools.registered.items() if spec == "calculator"]
        if toy.tool_demo_prob and not names:
            raise ConfigError(
                f"prepare.args.tool_demo_prob={toy.tool_demo_prob} demonstrates the calculator, but "
                "tools.registered has none; add tools.registered.calculator=calculator"
            )
        return cls(toy, cfg.seed, abstain_answer, cfg.tools, names[0] if names else None)

    def response(self, row: dict[str, str], rng: random.Random) -> str | list[dict[str, Any]]:
        """A demonstration's response to `row`: a string, or segments (the tool's output untrained)."""
        toy = self.toy
        if MISSING in row["prompt"]:  # unanswerable
            answer = (
                self.abstain_answer if rng.random() < toy.abstain_demo_prob else fabricated_answer(row["prompt"], rng)
            )
        else:
            answer = demonstration(row["label"], rng, toy.distractor_prob)
        if self.tools is None:
            return answer
        tags = self.tools
        final = [{"text": f"{tags.answer_open_tag}{answer}{tags.answer_close_tag}"}]
        if MISSING in row["prompt"] or rng.random() >= toy.tool_demo_prob:
            return final
        expression = row["prompt"].removesuffix("=")
        call = f"{tags.call_open_tag}{self.calculator}: {expression}{tags.call_close_tag}"
        result = format_result(ToolResult(is_ok=True, output=str(evaluate(expression))), tags)
        return [{"text": call}, {"text": result, "train": False}, *final]


def write_demonstrations(
    path: Path, rows: list[dict[str, str]], style: DemonstrationStyle, *, num_demonstrations: int
) -> Path:
    """Write demonstration rows `{"prompt", "response"}` for the training prompts `rows`.

    Every training prompt gets the same number of demonstrations, at least `num_demonstrations` in all (what
    the SFT stage consumes, `sft.steps * sft.batch_size`, so no demonstration repeats), and each draws its own
    distractor, tool use and abstention (`DemonstrationStyle.response`): as habits vary between the
    demonstrations of one prompt, the policy learns the skill and the habit's rate, not a per-prompt ending.
    """
    copies = max(1, math.ceil(num_demonstrations / len(rows)))
    rng = random.Random(f"demonstrations:{style.seed}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for _ in range(copies):
            for row in rows:
                f.write(json.dumps({"prompt": row["prompt"], "response": style.response(row, rng)}) + "\n")
    return path
