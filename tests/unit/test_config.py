import pytest

from slime_rl.config import load_config
from slime_rl.errors import ConfigError


def test_config_defaults_compose_to_typed_sync_native_run():
    cfg = load_config()
    assert cfg.mode.name == "sync"
    assert cfg.engine.kind == "native"
    assert cfg.buffer.url is None
    assert cfg.cluster.address is None
    assert cfg.model.path == "outputs/run/toy_model"  # interpolated from output_dir and name


def test_config_overrides_reach_the_typed_config():
    cfg = load_config(["rollout.max_new_tokens=7", "name=abc", "trainer.tensor_model_parallel_size=2"])
    assert cfg.rollout.max_new_tokens == 7
    assert cfg.trainer.tensor_model_parallel_size == 2
    assert str(cfg.run_dir) == "outputs/abc"


def test_config_group_preset_switches_engine_to_sglang():
    cfg = load_config(["engine=sglang"])
    assert cfg.engine.kind == "sglang"
    assert cfg.engine.sglang["mem_fraction_static"] == 0.7


def test_config_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match="bogus"):
        load_config(["rollout.bogus=1"])


def test_config_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="rollout.max_new_tokens"):
        load_config(["rollout.max_new_tokens=many"])


def test_config_out_of_range_value_says_what_is_allowed():
    with pytest.raises(ConfigError, match=r"rollout.top_p must be in \(0, 1\], got 2.0"):
        load_config(["rollout.top_p=2"])


def test_config_unknown_choice_lists_the_choices():
    with pytest.raises(
        ConfigError, match=r"engine.kind='vllm' is unknown; choose one of \['native', 'sglang', 'simulated'\]"
    ):
        load_config(["engine.kind=vllm"])


def test_config_required_model_path_is_reported_when_missing():
    with pytest.raises(ConfigError, match="model.path"):
        load_config(["model=hf"])


def test_config_non_redis_url_is_rejected_with_fix():
    with pytest.raises(ConfigError, match="buffer.url='http://x' is not a Redis URL"):
        load_config(["buffer.url=http://x"])


def test_config_micro_batch_larger_than_step_is_rejected():
    with pytest.raises(ConfigError, match="trainer.micro_batch_size=100"):
        load_config(["trainer.micro_batch_size=100", "rollout.rollout_batch_size=2", "rollout.n_samples_per_prompt=2"])


def test_config_gpu_trainer_cannot_broadcast_weights_to_a_cpu_native_engine():
    with pytest.raises(ConfigError, match="set engine.device=cuda or trainer.weight_sync=disk"):
        load_config(["trainer=gpu", "engine.device=cpu"])
    assert load_config(["trainer=gpu", "engine.device=cpu", "trainer.weight_sync=disk"]).trainer.weight_sync == "disk"


def test_check_model_path_missing_directory_names_the_key_and_the_fix(tmp_path):
    from slime_rl.config.model import ModelConfig, check_model_path

    missing = tmp_path / "no_such_model"
    with pytest.raises(ConfigError, match=r"model.path='.*no_such_model' does not exist") as err:
        check_model_path(ModelConfig(path=str(missing)))
    assert "set model.path=<HuggingFace model directory>" in str(err.value)
    assert "experiment=toy" in str(err.value)


def test_check_model_path_directory_without_weights_is_rejected(tmp_path):
    from slime_rl.config.model import ModelConfig, check_model_path

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"model.path=.* has no \*.safetensors"):
        check_model_path(ModelConfig(path=str(tmp_path)))
    (tmp_path / "config.json").unlink()
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"model.path=.* has no config.json"):
        check_model_path(ModelConfig(path=str(tmp_path)))


def test_check_model_path_accepts_a_huggingface_directory(tmp_path):
    from slime_rl.config.model import ModelConfig, check_model_path

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"")
    check_model_path(ModelConfig(path=str(tmp_path)))


@pytest.mark.parametrize(
    ("override", "key"),
    [("+rollout.bogus=1", "rollout.bogus"), ("+bogus=2", "bogus"), ("+trainer.optimizer.lr=1", "trainer.optimizer")],
)
def test_config_added_key_the_schema_lacks_is_rejected(override, key):
    with pytest.raises(ConfigError, match=f"unknown config key\\(s\\) {key}"):
        load_config([override])


def test_config_added_key_under_a_dict_field_is_kept():
    cfg = load_config(["engine=sglang", "+engine.sglang.chunked_prefill_size=4096"])
    assert cfg.engine.sglang["chunked_prefill_size"] == 4096


def test_config_engine_profiler_steps_must_be_profiled_steps_of_a_model_running_engine():
    cfg = load_config(["profile.num_steps=3", "profile.sglang_profiler_steps=[0,2]"])
    assert cfg.profile.sglang_profiler_steps == [0, 2]
    with pytest.raises(ConfigError, match=r"steps \[3\] outside 0\.\.2"):
        load_config(["profile.num_steps=3", "profile.sglang_profiler_steps=[3]"])
    with pytest.raises(ConfigError, match="engine.kind=simulated runs none"):
        load_config(["engine=simulated", "profile.sglang_profiler_steps=[0]"])
