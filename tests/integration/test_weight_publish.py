"""Rank 0's weight publishing against a fake engine on loopback: failures end the publish promptly, a
failed group is rebuilt on the next publish, and disk publishing keeps only the newest version.

The fake engine speaks the weight-update subset of the SGLang protocol; its ranks join the weight-update
group for real (gloo), each in a process of its own (weight_ranks.py); it can be told to fail a call.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch

from slime_rl.errors import ServiceError
from slime_rl.trainer import weight_sync
from tests.integration.weight_ranks import EngineRanks, TensorRecord, tensor_record

GUARD_S = 60.0  # generous: a publish stuck in the collective waits for the group's timeout


class FakeEngine:
    """HTTP server with the weight endpoints, whose `num_ranks` ranks (its TP ranks) join the group.

    `recipe`: how the ranks build their end, "native" (the native engine's code) or "sglang" (SGLang's).
    `sessions`: like SGLang 0.5.23, it has `/begin_weight_update` and `/end_weight_update` and refuses updates
    outside a session; without, those answer 404 like SGLang 0.5.15. `fail_init`, `fail_updates`,
    `fail_disk`: calls left to fail. `received[rank]`: the tensors each rank got, by name.
    """

    def __init__(self, *, num_ranks: int = 1, recipe: str = "native", sessions: bool = False) -> None:
        self.num_ranks = num_ranks
        self.recipe = recipe
        self.sessions = sessions
        self.fail_init = 0
        self.fail_updates = 0
        self.fail_disk = 0
        self.init_calls = 0
        self.destroy_calls = 0
        self.init_bodies: list[dict] = []
        self.posts: list[str] = []  # every POST path, in order
        self.load_formats: list[str | None] = []  # `load_format` of every update
        self.session_open = False
        self.disk_paths: list[str] = []
        self.received: list[dict[str, TensorRecord]] = [{} for _ in range(num_ranks)]
        self.version = "0"
        self.ranks: EngineRanks | None = None  # started by the first join
        self.lock = threading.Lock()  # one call at a time reaches the ranks
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self.ranks is not None:
            self.ranks.close()

    def _on_ranks(self, method: str, per_rank: list[dict[str, Any]]) -> tuple[bool, Any]:
        """(True, every rank's result) or (False, the ranks' errors); the first call starts the ranks."""
        with self.lock:
            if self.ranks is None:
                self.ranks = EngineRanks(self.num_ranks, self.recipe)
            try:
                return True, self.ranks.call(method, per_rank)
            except RuntimeError as err:
                return False, str(err)

    def _init(self, body: dict) -> tuple[bool, str]:
        self.init_calls += 1
        self.init_bodies.append(body)
        if self.fail_init:
            self.fail_init -= 1
            return False, "cannot join: boom"
        shared = {k: body[k] for k in ("master_address", "master_port", "world_size", "group_name", "backend")}
        ok, result = self._on_ranks(
            "init_group", [shared | {"rank": body["rank_offset"] + tp_rank} for tp_rank in range(self.num_ranks)]
        )
        return ok, "joined" if ok else result

    def _update(self, body: dict) -> tuple[bool, str]:
        if self.sessions and not self.session_open:
            return False, "updates need a weight update session"
        if self.fail_updates:
            self.fail_updates -= 1
            return False, "cannot load: boom"
        keys = ("group_name", "names", "dtypes", "shapes", "load_format")
        self.load_formats.append(body.get("load_format"))
        ok, result = self._on_ranks("receive", [{k: body.get(k) for k in keys}] * self.num_ranks)
        if not ok:
            return False, result
        for received, tensors in zip(self.received, result, strict=True):
            received.update(tensors)
        if body.get("weight_version") is not None:
            self.version = body["weight_version"]
        return True, "updated"

    def _destroy(self, body: dict) -> tuple[bool, str]:
        self.destroy_calls += 1
        if self.ranks is None:
            return False, "no weight update group"
        ok, result = self._on_ranks("destroy", [{"group_name": body["group_name"]}] * self.num_ranks)
        return ok, "destroyed" if ok else result

    def _begin(self, body: dict) -> tuple[bool, str]:
        if self.session_open:
            return False, "a session is already open"
        self.session_open = True
        return True, "opened"

    def _end(self, body: dict) -> tuple[bool, str]:
        if not self.session_open:
            return False, "no session is open"
        self.session_open = False
        return True, "closed"

    def _disk(self, body: dict) -> tuple[bool, str]:
        if self.fail_disk:
            self.fail_disk -= 1
            return False, "cannot read: boom"
        self.disk_paths.append(body["model_path"])
        self.version = body["weight_version"]
        return True, "loaded"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        engine = self
        routes: dict[str, Callable[[dict], tuple[bool, str]]] = {
            "/init_weights_update_group": self._init,
            "/update_weights_from_distributed": self._update,
            "/destroy_weights_update_group": self._destroy,
            "/update_weights_from_disk": self._disk,
        }
        if self.sessions:
            routes |= {"/begin_weight_update": self._begin, "/end_weight_update": self._end}

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path == "/get_server_info":
                    self._reply(200, {"tp_size": engine.num_ranks})
                else:
                    self._reply(200, {"weight_version": engine.version})

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                engine.posts.append(self.path)
                if self.path not in routes:
                    self._reply(404, {"detail": "Not Found"})
                    return
                success, message = routes[self.path](body)
                self._reply(200 if success else 400, {"success": success, "message": message})

            def log_message(self, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def engine() -> Iterator[FakeEngine]:
    fake = FakeEngine()
    try:
        yield fake
    finally:
        fake.close()


def within_guard(fn: Callable[[], Any]) -> Any:
    """Run `fn` on a helper thread; its result, or the exception it raised. Fails if it is still running
    after `GUARD_S` (the helper is a daemon and is left behind)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fn()
        except Exception as err:
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(GUARD_S)
    assert not thread.is_alive(), f"still waiting after {GUARD_S:.0f}s"
    return outcome.get("error", outcome.get("result"))


TENSORS = {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b.bias": torch.ones(4)}


def test_weight_publisher_failed_group_join_raises_with_engine_message_and_next_publish_rebuilds(engine, publishers):
    publisher = publishers(bucket_bytes=1 << 20)
    engine.fail_init = 1
    error = within_guard(lambda: publisher.broadcast([engine.url], TENSORS, version=1))
    assert isinstance(error, ServiceError)
    assert engine.url in str(error) and "cannot join: boom" in str(error)
    assert within_guard(lambda: publisher.broadcast([engine.url], TENSORS, version=2)).buckets == 1
    assert engine.init_calls == 2 and engine.version == "2"
    assert engine.received[0]["a.weight"] == tensor_record(TENSORS["a.weight"])


def test_weight_publisher_failed_update_raises_drops_the_group_and_next_publish_rebuilds(engine, publishers):
    publisher = publishers(bucket_bytes=1 << 20)
    assert within_guard(lambda: publisher.broadcast([engine.url], TENSORS, version=1)).buckets == 1
    engine.fail_updates = 1
    error = within_guard(lambda: publisher.broadcast([engine.url], TENSORS, version=2))
    assert isinstance(error, ServiceError)
    assert engine.url in str(error) and "cannot load: boom" in str(error)
    assert engine.destroy_calls == 1 and engine.version == "1"
    assert within_guard(lambda: publisher.broadcast([engine.url], TENSORS, version=3)).buckets == 1
    assert engine.init_calls == 2 and engine.version == "3"
    assert engine.received[0]["b.bias"] == tensor_record(TENSORS["b.bias"])


@pytest.mark.parametrize("recipe", ["native", "sglang"])
@pytest.mark.parametrize("send_format", ["flattened_bucket", "per_tensor", "auto"])
def test_weight_publisher_sends_buckets_cut_at_the_size_and_at_misaligned_dtypes(recipe, send_format, publishers):
    # 6 bytes of bfloat16 then a float32 (misaligned at byte 6: a new bucket); then 64 + 8 bytes > the 64-byte
    # bucket (a new bucket). Flattened (also `auto` for tensors this small), each bucket is one broadcast that
    # both the native and SGLang's recipe unpack; per tensor, one broadcast per tensor.
    tensors = {
        "a": torch.tensor([1.5, -2.0, 3.25], dtype=torch.bfloat16),
        "b": torch.arange(16, dtype=torch.float32),
        "c": torch.tensor([7, -9], dtype=torch.int32),
    }
    engine = FakeEngine(recipe=recipe)
    try:
        publisher = publishers(bucket_bytes=64, send_format=send_format)
        flattened = send_format != "per_tensor"
        sent = within_guard(lambda: publisher.broadcast([engine.url], tensors, version=1))
        # here a tensor per bucket either way, packed unless per tensor
        assert sent == weight_sync.Sent(buckets=3, broadcasts=3, packed_bytes=78 if flattened else 0)
        assert engine.load_formats == ["flattened_bucket" if flattened else None] * 3
        assert engine.received[0] == {name: tensor_record(t) for name, t in tensors.items()}
    finally:
        engine.close()


@pytest.mark.parametrize("send_format", ["auto", "flattened_bucket", "per_tensor"])
def test_weight_publisher_sends_tensors_lying_back_to_back_from_their_memory_and_packs_the_rest(
    engine, publishers, send_format, monkeypatch
):
    # p0, p1, p2 fill one buffer back to back (a view each, as the trainer's parameter buffer gives), out of
    # order in the dict; q is a copy of its own and r a lone view: they are packed (or sent one by one).
    memory = torch.arange(64, dtype=torch.float32)
    tensors = {
        "p1": memory[8:24].reshape(4, 4),
        "q": torch.full((3,), 5.0),
        "p0": memory[0:8],
        "r": memory[40:48],
        "p2": memory[24:32].reshape(2, 4),
    }
    packed: list[list[torch.Tensor]] = []
    flatten = weight_sync.flatten
    monkeypatch.setattr(weight_sync, "flatten", lambda ts, out=None: packed.append(list(ts)) or flatten(ts, out))
    publisher = publishers(bucket_bytes=1 << 20, send_format=send_format)
    sent = within_guard(lambda: publisher.broadcast([engine.url], tensors, version=1))
    if send_format == "per_tensor":
        assert sent == weight_sync.Sent(buckets=1, broadcasts=5) and engine.load_formats == [None]
    else:
        # The run goes in place; q and r are packed.
        assert sent == weight_sync.Sent(buckets=2, broadcasts=2, packed_bytes=12 + 32)
        assert engine.load_formats == ["flattened_bucket"] * 2
        assert [[t.data_ptr() for t in bucket] for bucket in packed] == [[tensors[n].data_ptr() for n in "qr"]]
    assert engine.received[0] == {name: tensor_record(t) for name, t in tensors.items()}
    assert engine.version == "1"


def test_publish_to_disk_keeps_only_the_newest_version_and_nothing_else_is_touched(engine, tmp_path):
    root, side_files = tmp_path / "publish", tmp_path / "model"
    side_files.mkdir()
    root.mkdir()
    (root / "notes.txt").write_text("not ours")
    for version in (1, 2, 3):
        path = weight_sync.publish_to_disk(TENSORS, root, [engine.url], version, side_files_from=side_files)
        assert path == root / f"v{version}"
    assert engine.disk_paths == [str(root / f"v{v}") for v in (1, 2, 3)] and engine.version == "3"
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt", "v3"]
    assert (root / "v3" / "model.safetensors").is_file()


def test_publish_to_disk_failed_load_raises_and_keeps_the_version_engines_serve(engine, tmp_path):
    side_files = tmp_path / "model"
    side_files.mkdir()
    weight_sync.publish_to_disk(TENSORS, tmp_path / "publish", [engine.url], 1, side_files_from=side_files)
    engine.fail_disk = 1
    with pytest.raises(ServiceError, match="cannot read: boom"):
        weight_sync.publish_to_disk(TENSORS, tmp_path / "publish", [engine.url], 2, side_files_from=side_files)
    assert (tmp_path / "publish" / "v1" / "model.safetensors").is_file()


def test_auto_send_format_is_flattened_over_nccl_and_for_small_tensors_else_per_tensor():
    assert weight_sync.send_format("auto", "nccl", 64 << 20) == "flattened_bucket"
    assert weight_sync.send_format("auto", "gloo", 64 << 10) == "flattened_bucket"
    assert weight_sync.send_format("auto", "gloo", 4 << 20) == "per_tensor"
    assert weight_sync.send_format("per_tensor", "nccl", 1) == "per_tensor"
