"""TrainGroup: one Ray actor per trainer rank, bootstrapped into one torch.distributed world.

Rank 0 reports its node address and a free port; every rank then joins the world there and builds the
Megatron model (`MegatronTrainer.init`). Each group method fans out to all ranks and gathers once
(STYLE.md rule 10): all ranks take part in every collective (training, gathering weights to publish).

Training data does not pass through here: `train` sends each rank its data-parallel share as a small
msgpack `TrainShare` (entry ids and advantages), and the ranks read the groups from the buffer
(`slime_rl.trainer.feed`).

A rank that dies (its process killed, a node lost) fails the call with `TrainerRankDied` naming the rank,
as soon as Ray reports it, even while its peers still wait for it inside a collective: the driver ends the
run and says how to resume from the last checkpoint.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, TypeVar

import ray

from slime_rl.buffer.codec import encode_share
from slime_rl.config.algorithm import AlgorithmConfig
from slime_rl.config.model import ModelConfig
from slime_rl.config.trainer import TrainerConfig
from slime_rl.errors import ServiceError
from slime_rl.orchestration.cluster import Located
from slime_rl.orchestration.placement import Placement
from slime_rl.types import TrainBatch, TrainShare

T = TypeVar("T")

logger = logging.getLogger(__name__)


class TrainerRankDied(ServiceError):
    """A trainer rank's actor died; the run cannot go on (its peers are stuck in their collectives)."""


class TrainerRank(Located):
    """Actor body of one rank: holds the plain `MegatronTrainer` and forwards the driver's calls to it."""

    def __init__(
        self,
        model: ModelConfig,
        trainer: TrainerConfig,
        algorithm: AlgorithmConfig,
        rank: int,
        world_size: int,
        buffer: tuple[str, str],
        lr_decay_steps: int | None = None,
    ) -> None:
        self._args = (model, trainer, algorithm, rank, world_size)
        self._buffer = buffer  # (redis URL, run id) of the run's buffer
        self._lr_decay_steps = lr_decay_steps
        self.trainer: Any = None
        self.feed: Any = None  # TrainFeed, once the rank has joined its groups
        self.listener: socket.socket | None = None  # rank 0: the socket its store will listen on

    def master_address(self, loopback: bool) -> tuple[str, int]:
        """Where the world's store will listen (rank 0): loopback on a local Ray, else this node's IP. The
        socket is bound now and kept for `init`, so the port stays ours."""
        from slime_rl.trainer.rendezvous import listen_socket

        self.listener = listen_socket("127.0.0.1" if loopback else ray.util.get_node_ip_address())
        return self.listener.getsockname()[:2]

    def init(self, master_addr: str, master_port: int) -> int:
        """Join the world and build the model; returns this rank's data-parallel rank."""
        from slime_rl.trainer.feed import open_feed
        from slime_rl.trainer.parallel import current_layout
        from slime_rl.trainer.trainer import MegatronTrainer

        model, trainer, algorithm, rank, world_size = self._args
        self.trainer = MegatronTrainer(
            model,
            trainer,
            algorithm,
            rank,
            world_size,
            master_addr,
            master_port,
            listener=self.listener,
            lr_decay_steps=self._lr_decay_steps,
        )
        self.trainer.init()
        self.feed = open_feed(*self._buffer)
        return current_layout().dp_rank

    def train(self, share: bytes) -> dict[str, float]:
        """Train on this rank's share (`codec.encode_share`); adds `train/payload_bytes_read` (this rank's)."""
        from slime_rl.buffer.codec import decode_share

        batch, bytes_read = self.feed.batch(decode_share(share))
        return self.trainer.train(batch) | {"train/payload_bytes_read": float(bytes_read)}

    def train_sft(self, batch: TrainBatch) -> dict[str, float]:
        return self.trainer.train_sft(batch)

    def set_lr(self, lr: float) -> None:
        self.trainer.set_lr(lr)

    def publish_weights(self, engine_urls: list[str], version: int) -> dict[str, float]:
        return self.trainer.publish_weights(engine_urls, version)

    def save(self, step: int) -> None:
        self.trainer.save(step)

    def load(self) -> int | None:
        return self.trainer.load()


class TrainGroup:
    """The trainer ranks of a run. Methods block until every rank is done and return rank 0's result.

    `loopback=True` (a local Ray) keeps the torch.distributed store and the weight-sync group on 127.0.0.1.
    `buffer` is the run's (redis URL, run id): where the ranks read their training data.
    """

    def __init__(
        self,
        model: ModelConfig,
        trainer: TrainerConfig,
        algorithm: AlgorithmConfig,
        placement: Placement,
        *,
        loopback: bool,
        buffer: tuple[str, str],
        lr_decay_steps: int | None = None,  # lr_schedule.run_lr_decay_steps; None: trainer.lr_decay_steps
    ) -> None:
        self.world_size = trainer.world_size
        self.data_parallel_size = trainer.data_parallel_size
        actor_cls = ray.remote(TrainerRank)
        self.ranks = [
            actor_cls.options(**slot.options(placement.pg)).remote(
                model, trainer, algorithm, rank, self.world_size, buffer, lr_decay_steps
            )
            for rank, slot in enumerate(placement.trainer_slots)
        ]
        master_addr, master_port = ray.get(self.ranks[0].master_address.remote(loopback))
        self.dp_ranks: list[int] = ray.get([r.init.remote(master_addr, master_port) for r in self.ranks])
        logger.info("trainer group ready: %d ranks, master %s:%d", self.world_size, master_addr, master_port)

    def _gather(self, refs: list[ray.ObjectRef], what: str) -> list[Any]:
        """Every rank's result of call `what`; raises `TrainerRankDied` as soon as one rank's actor is dead."""
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                ray.get(ready[0])  # raises at once if that rank failed, while its peers may wait for it
        except ray.exceptions.RayActorError as err:
            rank = refs.index(ready[0])
            cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise TrainerRankDied(f"trainer rank {rank} died during {what}: {cause}") from err
        return ray.get(refs)

    def _per_rank(self, parts: list[T]) -> list[T]:
        """`parts[d]` is data-parallel rank d's part; the TP/PP peers of one DP rank all get it."""
        if len(parts) != self.data_parallel_size:
            raise ValueError(f"got {len(parts)} parts for {self.data_parallel_size} data-parallel ranks")
        return [parts[dp_rank] for dp_rank in self.dp_ranks]

    def train(self, shares: list[TrainShare]) -> dict[str, float]:
        """One step on `shares[d]` for data-parallel rank d. Returns rank 0's metrics, with
        `driver/bytes_sent` (the encoded shares this call sent) and `train/payload_bytes_read` summed over
        the ranks (the groups they read from the buffer)."""
        encoded = self._per_rank([encode_share(share) for share in shares])
        results = self._gather([r.train.remote(e) for r, e in zip(self.ranks, encoded, strict=True)], "train")
        return results[0] | {
            "driver/bytes_sent": float(sum(len(e) for e in encoded)),
            "train/payload_bytes_read": sum(r["train/payload_bytes_read"] for r in results),
        }

    def train_sft(self, batches: list[TrainBatch]) -> dict[str, float]:
        refs = [r.train_sft.remote(b) for r, b in zip(self.ranks, self._per_rank(batches), strict=True)]
        return self._gather(refs, "train_sft")[0]

    def set_lr(self, lr: float) -> None:
        self._gather([r.set_lr.remote(lr) for r in self.ranks], "set_lr")

    def publish_weights(self, engine_urls: list[str], version: int) -> dict[str, float]:
        return self._gather([r.publish_weights.remote(engine_urls, version) for r in self.ranks], "publish_weights")[0]

    def save(self, step: int) -> None:
        self._gather([r.save.remote(step) for r in self.ranks], "save")

    def load(self) -> int | None:
        return self._gather([r.load.remote() for r in self.ranks], "load")[0]

    def shutdown(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)
