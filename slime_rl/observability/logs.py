"""Process-wide logging set-up: rich console handler plus a plain log file in the run directory."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler


def setup_logging(level: str = "INFO", log_file: Path | None = None) -> None:
    """Route `logging` to the console (rich) and, when given, to `log_file`. Idempotent."""
    root = logging.getLogger()
    root.setLevel(level)
    for handler in list(root.handlers):
        if getattr(handler, "_slime_rl", False):
            root.removeHandler(handler)
    # stderr: stdout stays clean for what a command prints as its result (a benchmark's JSON, a resolved config).
    console = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=True, markup=False)
    console._slime_rl = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        file_handler._slime_rl = True  # type: ignore[attr-defined]
        root.addHandler(file_handler)
    for noisy in ("httpx", "httpcore", "urllib3", "matplotlib", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
