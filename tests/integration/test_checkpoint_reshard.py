"""Trainer checkpoints reshard: saved at one TP/PP/DP layout, loaded at another, training continues exactly.

Each test compares a resumed run with one uninterrupted TP1 run (`reference`): the log-probs at the checkpoint,
the next step's loss (the weights carried over) and the log-probs after that step (the Adam moments and the LR
schedule carried over: a fresh optimizer would take a different step).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from slime_rl.config import TrainerConfig
from slime_rl.errors import ConfigError
from slime_rl.trainer import checkpoint
from slime_rl.trainer.checkpoint import export_checkpoint_to_hf
from tests.integration.family_models import make_family_model
from tests.integration.trainer_ranks import FIXED_OLD, dp_halves, make_batch, run_ranks, trainer_cfg

BATCH = make_batch(num_samples=8)
HALVES = dp_halves(BATCH)


def _cfg(checkpoint_dir: Path, tp: int = 1, pp: int = 1, dp: int = 1, **overrides) -> TrainerConfig:
    # A decaying schedule: the resumed step must run at the checkpointed step's rate.
    return trainer_cfg(
        tp, pp, dp, lr_decay_style="linear", lr_decay_steps=4, checkpoint_dir=str(checkpoint_dir), **overrides
    )


def _continue(trainer):
    """Log-probs now, one more step (each DP replica on its half of the batch), log-probs after it."""
    before = np.concatenate(trainer.compute_logprobs(BATCH))
    own = HALVES[trainer.layout.dp_rank] if trainer.layout.dp_size > 1 else BATCH
    metrics = trainer.train(own)
    return {"logprobs": before, "next": metrics, "logprobs_after": np.concatenate(trainer.compute_logprobs(BATCH))}


def step_save_continue(trainer):
    trainer.train(HALVES[trainer.layout.dp_rank] if trainer.layout.dp_size > 1 else BATCH)
    trainer.save(step=1)
    return _continue(trainer)


def load_continue(trainer, export_dir=None):
    step = trainer.load()
    result = {"step": step, "version": trainer.version, **_continue(trainer)}
    trainer.save(step=2)  # saving works at the new layout too (Megatron checks each shard is written once)
    if export_dir is not None:  # the weights just saved, exported live
        trainer.export_hf(export_dir)
    return result


@pytest.fixture(scope="module")
def reference(tied_qwen, tmp_path_factory):
    """The uninterrupted TP1 run; its step-1 checkpoint is the TP1/DP1 source of the resharding tests."""
    ckpt = tmp_path_factory.mktemp("reference") / "ckpt"
    (result,) = run_ranks(step_save_continue, model_path=tied_qwen, trainer_cfg=_cfg(ckpt), algo_cfg=FIXED_OLD)
    return SimpleNamespace(checkpoint_dir=ckpt, **result)


def _assert_continues_reference(results, reference):
    for result in results:
        assert (result["step"], result["version"]) == (1, 1)
        assert result["next"]["train/lr"] == pytest.approx(0.75 * 1e-2)
        for key in ("train/loss", "train/kl", "train/entropy", "train/grad_norm"):
            assert result["next"][key] == pytest.approx(reference.next[key], abs=1e-5), key
        np.testing.assert_allclose(result["logprobs"], reference.logprobs, atol=1e-5)
        np.testing.assert_allclose(result["logprobs_after"], reference.logprobs_after, atol=1e-5)
    # The resumed step moved the weights, so the log-probs after it test the optimizer state too.
    assert np.abs(reference.logprobs_after - reference.logprobs).max() > 1e-3


def _copy_checkpoints(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "ckpt"))


def test_checkpoint_saved_at_tp1_resumes_at_tp2_and_exports_from_tp2(reference, tied_qwen, tmp_path):
    ckpt = _copy_checkpoints(reference.checkpoint_dir, tmp_path)
    live = tmp_path / "live_export"
    results = run_ranks(
        load_continue, model_path=tied_qwen, trainer_cfg=_cfg(ckpt, tp=2), algo_cfg=FIXED_OLD, export_dir=str(live)
    )
    _assert_continues_reference(results, reference)
    # The TP2 checkpoint of step 2 exports offline to exactly the HF tensors the live TP2 trainer gathered.
    offline = load_file(str(export_checkpoint_to_hf(ckpt, tmp_path / "offline") / "model.safetensors"))
    expected = load_file(str(live / "model.safetensors"))
    assert offline.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(offline[name], tensor, rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path / "offline").iterdir()) == sorted(p.name for p in live.iterdir())


def test_checkpoint_saved_at_dp1_resumes_at_dp2(reference, tied_qwen, tmp_path):
    ckpt = _copy_checkpoints(reference.checkpoint_dir, tmp_path)
    results = run_ranks(load_continue, model_path=tied_qwen, trainer_cfg=_cfg(ckpt, dp=2), algo_cfg=FIXED_OLD)
    _assert_continues_reference(results, reference)


def test_checkpoint_saved_at_pp2_resumes_at_pp1(reference, tied_qwen, tmp_path):
    ckpt = tmp_path / "ckpt"
    run_ranks(step_save_continue, model_path=tied_qwen, trainer_cfg=_cfg(ckpt, pp=2), algo_cfg=FIXED_OLD)
    assert json.loads((checkpoint.step_dir(ckpt, 1) / "meta.json").read_text())["pp_size"] == 2
    results = run_ranks(load_continue, model_path=tied_qwen, trainer_cfg=_cfg(ckpt), algo_cfg=FIXED_OLD)
    _assert_continues_reference(results, reference)


def test_distributed_optimizer_checkpoint_saved_at_dp2_resumes_at_tp2(reference, tied_qwen, tmp_path):
    # The distributed optimizer shards Adam's moments over the DP ranks; the checkpoint holds them whole.
    ckpt = tmp_path / "ckpt"
    saved_at_dp2 = _cfg(ckpt, dp=2, use_distributed_optimizer=True)
    run_ranks(step_save_continue, model_path=tied_qwen, trainer_cfg=saved_at_dp2, algo_cfg=FIXED_OLD)
    resumed_at_tp2 = _cfg(ckpt, tp=2, use_distributed_optimizer=True)
    results = run_ranks(load_continue, model_path=tied_qwen, trainer_cfg=resumed_at_tp2, algo_cfg=FIXED_OLD)
    _assert_continues_reference(results, reference)


def _load_or_error(trainer):
    try:
        return load_continue(trainer)
    except ConfigError as err:
        return str(err)


def test_moe_checkpoint_saved_at_ep2_loads_its_weights_at_ep1(tmp_path):
    # Two DP ranks: at EP2 each holds 2 of the 4 experts, at EP1 all 4; the checkpoint holds every expert whole.
    # Adam's state is kept in two parts at EP2 (experts apart) and in one at EP1, which Megatron names differently.
    model = str(make_family_model(tmp_path / "hf", "qwen3_moe"))
    reference = run_ranks(
        step_save_continue, model_path=model, trainer_cfg=_cfg(tmp_path / "ref", dp=2), algo_cfg=FIXED_OLD
    )[0]
    ckpt = tmp_path / "ckpt"
    saved_at_ep2 = _cfg(ckpt, dp=2, expert_model_parallel_size=2)
    run_ranks(step_save_continue, model_path=model, trainer_cfg=saved_at_ep2, algo_cfg=FIXED_OLD)
    errors = run_ranks(_load_or_error, model_path=model, trainer_cfg=_cfg(ckpt, dp=2), algo_cfg=FIXED_OLD)
    assert all("in 2 part(s)" in e and "trainer.load_optimizer=false" in e and "\n" not in e for e in errors)
    weights_only = _cfg(ckpt, dp=2, load_optimizer=False)
    for result in run_ranks(load_continue, model_path=model, trainer_cfg=weights_only, algo_cfg=FIXED_OLD):
        assert (result["step"], result["version"]) == (1, 1)
        np.testing.assert_allclose(result["logprobs"], reference["logprobs"], atol=1e-5)
        assert result["next"]["train/loss"] == pytest.approx(reference["next"]["train/loss"], abs=1e-5)


def test_checkpoint_of_the_other_optimizer_kind_is_refused_with_the_fix(reference, tmp_path):
    ckpt = _copy_checkpoints(reference.checkpoint_dir, tmp_path)
    trainer = SimpleNamespace(cfg=TrainerConfig(checkpoint_dir=str(ckpt), use_distributed_optimizer=True))
    with pytest.raises(ConfigError, match=r"use_distributed_optimizer=False; resume with .*=False") as err:
        checkpoint.load(trainer)
    assert "\n" not in str(err.value)


def _old_format_checkpoint(root: Path) -> Path:
    """A checkpoint as the per-rank format wrote it: rank files and a meta.json without "format"."""
    step = checkpoint.step_dir(root, 3)
    step.mkdir(parents=True)
    torch.save({"embedding.word_embeddings.weight": torch.zeros(2, 2)}, step / "model_tp0_pp0.pt")
    meta = {"step": 3, "version": 3, "tp_size": 1, "pp_size": 1}
    (step / "meta.json").write_text(json.dumps(meta))
    (root / "latest").write_text(step.name)
    return step


def test_old_per_rank_checkpoint_is_refused_with_the_fix(tmp_path):
    step = _old_format_checkpoint(tmp_path / "ckpt")
    trainer = SimpleNamespace(cfg=TrainerConfig(checkpoint_dir=str(tmp_path / "ckpt")))
    for attempt in (
        lambda: checkpoint.load(trainer),
        lambda: export_checkpoint_to_hf(tmp_path / "ckpt", tmp_path / "hf"),
    ):
        with pytest.raises(ConfigError) as err:
            attempt()
        message = str(err.value)
        assert "\n" not in message
        assert str(step) in message and "per-rank format" in message and "export-hf" in message
