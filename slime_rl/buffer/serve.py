"""Run the embedded Redis as a standalone service, for launch scripts: `python -m slime_rl.buffer.serve`.

A cluster launcher (`launch/slurm/train.sbatch`) starts the buffer once on the head node and hands its URL to
the driver as an external buffer (`buffer=external`), so the server outlives no one: it runs until this process
gets SIGTERM or SIGINT, then stops. The server is the same `EmbeddedRedis` a local run uses (password, AOF,
restarted if it dies, killed with this process). The URL, password included, is written to `--url-file` with
mode 0600 once the server answers; this module never prints it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path

from slime_rl.buffer.server import EmbeddedRedis
from slime_rl.config.buffer import BufferConfig

logger = logging.getLogger(__name__)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only; readers never see a partial file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def serve(host: str, data_dir: Path, url_file: Path, *, appendonly: bool) -> None:
    """Start the server on `host` (random free port, random password), publish its URL, block until a signal."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with EmbeddedRedis(BufferConfig(host=host, appendonly=appendonly), data_dir) as address:
        write_private(url_file, address.url + "\n")
        logger.info("Redis buffer on %s:%d (data in %s); URL in %s", address.host, address.port, data_dir, url_file)
        stop.wait()
        logger.info("stopping the Redis buffer on %s:%d", address.host, address.port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m slime_rl.buffer.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (a cluster: the head node's IP)")
    parser.add_argument("--data-dir", type=Path, required=True, help="AOF and server log folder")
    parser.add_argument("--url-file", type=Path, required=True, help="where to write redis://:password@host:port/0")
    parser.add_argument("--appendonly", action=argparse.BooleanOptionalAction, default=True, help="AOF persistence")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    serve(args.host, args.data_dir, args.url_file, appendonly=args.appendonly)


if __name__ == "__main__":
    main()
