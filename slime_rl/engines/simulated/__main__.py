"""`python -m slime_rl.engines.simulated --num-engines N`: serve N simulated engines from this process until SIGTERM.

Prints one JSON line `{"pid", "urls"}` when every engine accepts connections (and writes it to `--urls-file`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import uvloop

from slime_rl.engines.simulated.cost import CostModel, calibrate_files
from slime_rl.engines.simulated.engine import SimulatedEngineArgs
from slime_rl.engines.simulated.serve import serve


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="slime-rl simulated engines (SGLang HTTP protocol, cost model, no model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="port of the first engine, the others follow; 0: free ports")
    p.add_argument("--ports", default=None, help="comma-separated port of each engine (overrides --port)")
    p.add_argument("--num-engines", type=int, default=1)
    p.add_argument("--urls-file", default=None, help="write {pid, urls} as JSON here once serving")
    p.add_argument("--model-path", default="simulated", help="reported as the model; its config.json gives vocab/EOS")
    p.add_argument("--max-running-requests", type=int, default=64)
    p.add_argument("--max-context-len", type=int, default=2048)
    p.add_argument("--max-prefill-tokens", type=int, default=4096)
    p.add_argument("--weight-version", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=0, help="0: from the model's config.json")
    p.add_argument("--eos-token-id", type=int, default=-1, help="-1: from the model's config.json")
    p.add_argument("--decode-step-base-ms", type=float, default=10.0, help="a: ms per decode step")
    p.add_argument("--decode-row-ms", type=float, default=0.2, help="b: ms per running sequence per step")
    p.add_argument("--decode-context-token-us", type=float, default=0.0, help="c: us per context token per step")
    p.add_argument("--prefill-token-us", type=float, default=20.0, help="d: us per prefilled prompt token")
    p.add_argument("--prefill-base-ms", type=float, default=0.0, help="e: ms per step that prefills anything")
    p.add_argument(
        "--calibration",
        nargs="+",
        default=None,
        help="decode_step_cost.py JSON file(s): replace a, b, c (d, e if given)",
    )
    p.add_argument("--length-median", type=float, default=64.0, help="median response length, tokens (lognormal)")
    p.add_argument("--length-sigma", type=float, default=1.0, help="lognormal sigma of response lengths")
    p.add_argument("--length-trace", default=None, help="JSONL of {input_ids, response_lengths} replayed per prompt")
    return p


def engine_args(ns: argparse.Namespace) -> SimulatedEngineArgs:
    cost = CostModel(
        decode_base_s=ns.decode_step_base_ms / 1e3,
        decode_row_s=ns.decode_row_ms / 1e3,
        decode_context_token_s=ns.decode_context_token_us / 1e6,
        prefill_token_s=ns.prefill_token_us / 1e6,
        prefill_base_s=ns.prefill_base_ms / 1e3,
    )
    if ns.calibration:
        cost = calibrate_files(ns.calibration, cost)
    return SimulatedEngineArgs(
        model_path=ns.model_path,
        max_running_requests=ns.max_running_requests,
        max_context_len=ns.max_context_len,
        max_prefill_tokens=ns.max_prefill_tokens,
        weight_version=ns.weight_version,
        seed=ns.seed,
        vocab_size=ns.vocab_size,
        eos_token_id=ns.eos_token_id,
        cost=cost,
        length_median=ns.length_median,
        length_sigma=ns.length_sigma,
        length_trace_path=ns.length_trace,
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ns = parser().parse_args(argv)
    if ns.num_engines < 1:
        sys.exit("--num-engines must be >= 1")
    ports = [int(port) for port in ns.ports.split(",")] if ns.ports else None
    if ports is not None and len(ports) != ns.num_engines:
        sys.exit(f"--ports lists {len(ports)} ports for --num-engines {ns.num_engines}")
    args = engine_args(ns)
    logging.getLogger(__name__).info("cost model: %s", args.cost)

    def ready(urls: list[str]) -> None:  # one JSON line on stdout: what the launcher reads the URLs from
        sys.stdout.write(json.dumps({"pid": os.getpid(), "urls": urls}) + "\n")
        sys.stdout.flush()

    uvloop.run(
        serve(
            args,
            host=ns.host,
            num_engines=ns.num_engines,
            first_port=ns.port,
            ports=ports,
            urls_file=ns.urls_file,
            on_ready=ready,
        )
    )


if __name__ == "__main__":
    main()
