"""Build hook: the wheel carries the top-level Hydra config tree `configs/` as `slime_rl/configs/`.

Everything else about the package is declared in pyproject.toml. A source checkout (and an editable
install) reads `configs/` where it is; `slime_rl.config.config_dir` looks in both places.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONFIGS = Path(__file__).resolve().parent / "configs"


class BuildPyWithConfigs(build_py):
    """`build_py` that also copies `configs/**/*.yaml` into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads configs/ from the checkout
            return
        target = Path(self.build_lib) / "slime_rl" / "configs"
        shutil.rmtree(target, ignore_errors=True)
        for source in CONFIGS.rglob("*.yaml"):
            dest = target / source.relative_to(CONFIGS)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)


setup(cmdclass={"build_py": BuildPyWithConfigs})
