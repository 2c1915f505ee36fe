"""Wait until a Ray cluster has a given number of live nodes: `python wait_for_nodes.py HEAD:PORT NUM_NODES`.

Exits 0 once `NUM_NODES` nodes are alive, 1 on timeout (`--timeout-s`). Connects as a short-lived driver, so
it needs the cluster's token (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN). The head may still be starting: failed
connections are retried until the deadline.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time


def wait_for_port(address: str, deadline: float) -> bool:
    """True once `host:port` accepts a TCP connection (the GCS is up); False at the deadline."""
    host, _, port = address.rpartition(":")
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="the head's GCS address, host:port")
    parser.add_argument("num_nodes", type=int)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    args = parser.parse_args()

    import ray

    deadline = time.monotonic() + args.timeout_s
    alive = 0
    while wait_for_port(args.address, deadline):
        try:
            ray.init(address=args.address, logging_level=logging.WARNING, log_to_driver=False)
        except ConnectionError as err:
            print(f"wait_for_nodes: Ray at {args.address} not reachable yet ({err})", file=sys.stderr)
            time.sleep(2)
            continue
        try:
            while time.monotonic() < deadline:
                alive = sum(1 for node in ray.nodes() if node["Alive"])
                if alive >= args.num_nodes:
                    print(f"wait_for_nodes: {alive} Ray nodes alive", file=sys.stderr)
                    return 0
                time.sleep(1)
        finally:
            ray.shutdown()
    print(f"wait_for_nodes: {alive} of {args.num_nodes} Ray nodes alive after {args.timeout_s:.0f} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
