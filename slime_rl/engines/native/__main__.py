"""`python -m slime_rl.engines.native`: parse flags, load the model, serve HTTP until SIGTERM."""

from __future__ import annotations

import argparse
import dataclasses
import logging

import uvicorn

from slime_rl.engines.native.app import build_app
from slime_rl.engines.native.engine import NativeEngine, NativeEngineArgs


def parse_args(argv: list[str] | None = None) -> NativeEngineArgs:
    parser = argparse.ArgumentParser(description="slime-rl native engine (SGLang HTTP protocol)")
    for f in dataclasses.fields(NativeEngineArgs):
        flag = "--" + f.name.replace("_", "-")
        if f.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)
    return NativeEngineArgs(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    engine = NativeEngine(args)
    engine.start()
    try:
        uvicorn.run(
            build_app(engine),
            host=args.host,
            port=args.port,
            loop="uvloop",  # see pyproject.toml: the HTTP layer shares the GIL with the model thread
            http="httptools",
            log_level="warning",
            timeout_keep_alive=60,
        )
    finally:
        engine.stop()


if __name__ == "__main__":
    main()
