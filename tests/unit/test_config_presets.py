"""Config presets and defaults: algorithms follow their papers, inert corrections are rejected, checkpoints are on."""

import pytest

from slime_rl.config import AlgorithmConfig, load_config
from slime_rl.errors import ConfigError


@pytest.mark.parametrize(
    ("preset", "clip_low", "clip_high", "reduction"),
    [
        ("grpo", 0.2, 0.2, "token_mean"),  # PPO's symmetric clip (DeepSeekMath)
        ("dapo", 0.2, 0.28, "token_mean"),  # clip-higher, token-level loss
        ("gspo", 3e-4, 4e-4, "sample_mean"),  # sequence-ratio clip range of the GSPO paper
        ("dr_grpo", 0.2, 0.2, "token_sum_norm"),
    ],
)
def test_algorithm_preset_sets_its_papers_clip_range(preset, clip_low, clip_high, reduction):
    cfg = load_config([f"algorithm={preset}"]).algorithm
    assert (cfg.eps_clip, cfg.eps_clip_high, cfg.loss_reduction) == (clip_low, clip_high, reduction)


def test_algorithm_default_is_plain_grpo_without_clip_higher():
    assert load_config().algorithm.eps_clip_high == load_config().algorithm.eps_clip == 0.2


@pytest.mark.parametrize("overrides", [{"use_tis": True}, {"off_policy": "tis"}])
def test_algorithm_tis_without_recomputed_old_logprobs_is_rejected(overrides):
    with pytest.raises(ConfigError, match="recompute_old_logprobs=true"):
        AlgorithmConfig(recompute_old_logprobs=False, **overrides)


def test_algorithm_tis_with_recomputed_old_logprobs_loads():
    assert AlgorithmConfig(use_tis=True).use_tis


def test_toy_run_checkpoints_before_its_last_step_by_default():
    # A crash must not lose the whole run: checkpoints are on by default, not only at the end.
    cfg = load_config(["experiment=toy"])
    assert 0 < cfg.trainer.save_interval < cfg.mode.num_steps
    assert cfg.trainer.max_checkpoints_to_keep >= 1
