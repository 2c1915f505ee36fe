"""The wheel carries the Hydra config tree, and an installed (non-editable) slime-rl composes its config."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _source_copy(dest: Path) -> Path:
    """The files a build reads, copied: setuptools writes `build/` into the tree it builds."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("slime_rl", "configs"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    return dest


def test_wheel_ships_configs_and_an_installed_package_finds_them(tmp_path):
    source = _source_copy(tmp_path / "src")
    # No build isolation: the venv's setuptools builds it offline in a few seconds.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        check=True,
        capture_output=True,
        cwd=source,
    )
    (wheel,) = tmp_path.glob("slime_rl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"slime_rl/configs/{p.relative_to(REPO / 'configs')}" for p in (REPO / "configs").rglob("*.yaml")}
    assert "slime_rl/configs/config.yaml" in expected
    assert expected <= names, sorted(expected - names)

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {k: v for k, v in os.environ.items() if k != "SLIME_RL_CONFIG_DIR"}
    env["PYTHONPATH"] = str(site)  # ahead of the editable checkout in the venv
    script = (
        "import slime_rl; from slime_rl.config import config_dir, load_config; "
        "print(slime_rl.__file__); print(config_dir()); print(load_config(['experiment=toy']).name)"
    )
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    package_file, configs, name = result.stdout.split()
    assert Path(package_file).is_relative_to(site)
    assert Path(configs) == site / "slime_rl" / "configs"
    assert name == "toy"
