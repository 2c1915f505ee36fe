"""`slime-rl train`: user errors end in one line on stderr and exit 1; HYDRA_FULL_ERROR=1 shows the traceback."""

import time

import pytest
from hydra.errors import ConfigCompositionException

from slime_rl.cli import main
from slime_rl.errors import ConfigError


def _error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run `slime-rl <argv>`, expect exit status 1, return stderr (checked to be a single line)."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and "HYDRA_FULL_ERROR" not in err, err
    assert err.startswith("slime-rl train: error: "), err
    return err


@pytest.fixture
def in_tmp_dir(tmp_path, monkeypatch):
    """Run in an empty directory, so runs write under it, with HYDRA_FULL_ERROR unset."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    return tmp_path


def test_cli_train_without_arguments_fails_fast_naming_model_path(in_tmp_dir, capsys):
    start = time.monotonic()
    err = _error_line(capsys, ["train"])
    assert time.monotonic() - start < 1.0
    assert "model.path='outputs/run/toy_model' does not exist" in err
    assert "experiment=toy" in err


def test_cli_train_missing_model_path_fails_before_any_service_starts(in_tmp_dir, capsys):
    err = _error_line(capsys, ["train", f"model.path={in_tmp_dir / 'nowhere'}"])
    assert "model.path=" in err and "does not exist" in err
    assert not (in_tmp_dir / "outputs" / "run" / "redis").exists()


def test_cli_train_unknown_key_is_one_line_naming_the_key(in_tmp_dir, capsys):
    err = _error_line(capsys, ["train", "rollout.bogus=1"])
    assert "rollout.bogus" in err and "Key 'bogus' not in 'RolloutConfig'" in err


def test_cli_train_wrong_type_is_one_line_naming_the_key(in_tmp_dir, capsys):
    err = _error_line(capsys, ["train", "rollout.max_new_tokens=many"])
    assert "rollout.max_new_tokens" in err and "could not be converted to Integer" in err


def test_cli_train_unparsable_override_is_one_line(in_tmp_dir, capsys):
    err = _error_line(capsys, ["train", "nonsense"])
    assert "Error parsing override 'nonsense'" in err


def test_cli_train_unknown_preset_lists_the_presets(in_tmp_dir, capsys):
    err = _error_line(capsys, ["train", "experiment=nope"])
    assert "experiment/nope" in err and "choose one of [" in err
    assert "'toy'" in err and "'qwen2.5_0.5b_math_1node'" in err


def test_cli_train_unset_required_value_names_the_key(in_tmp_dir, capsys):
    err = _error_line(capsys, ["train", "model=hf"])
    assert "model.path is not set" in err and "model.path=" in err


def test_cli_train_out_of_range_value_prints_the_config_error(in_tmp_dir, capsys):
    err = _error_line(capsys, ["train", "rollout.top_p=2"])
    assert err == "slime-rl train: error: rollout.top_p must be in (0, 1], got 2.0\n"


def test_cli_train_full_error_raises_composition_errors(in_tmp_dir, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigCompositionException):
        main(["train", "rollout.bogus=1"])


def test_cli_train_full_error_raises_errors_from_the_run(in_tmp_dir, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match="model.path"):
        main(["train"])
