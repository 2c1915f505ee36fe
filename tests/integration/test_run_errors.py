"""Errors from inside a run reach the user as one line, before any service starts where they can."""

import pytest

from slime_rl.cli import error_line, main
from slime_rl.config import load_config
from slime_rl.errors import ConfigError, DataError


def test_error_line_of_a_data_error_from_a_ray_task_is_its_message():
    from ray.exceptions import RayTaskError

    original = DataError("train.jsonl line 3: no 'prompt' key; set buffer.data.prompt_key")
    traceback_text = 'Traceback (most recent call last):\n  File "worker.py", line 1\nDataError: ...'
    wrapped = RayTaskError("RolloutWorker.generate", traceback_text, original, pid=1, ip="127.0.0.1")
    remote = wrapped.as_instanceof_cause()  # what `ray.get` raises: a RayTaskError that is also a DataError
    assert isinstance(remote, DataError)
    assert "\n" in str(remote)
    assert error_line(remote) == "train.jsonl line 3: no 'prompt' key; set buffer.data.prompt_key"


def test_cli_train_config_error_from_the_driver_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "prepare.path=slime_rl.toy.experiment:prepare"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err == (
        "slime-rl train: error: the toy experiment (prepare.path) needs buffer.data.path; experiment=toy sets it\n"
    )


def test_run_training_with_a_missing_model_fails_before_redis_and_ray(tmp_path):
    import ray

    from slime_rl.orchestration.driver import run_training

    cfg = load_config([f"output_dir={tmp_path}", f"model.path={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match="model.path=.*nowhere' does not exist"):
        run_training(cfg)
    assert not ray.is_initialized()
    assert not (tmp_path / "run" / "redis").exists()
