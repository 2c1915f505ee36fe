"""torch.distributed and Megatron `parallel_state` set-up for one trainer rank.

Owns process-group creation (NCCL on GPU, gloo on CPU) from an explicit rank / world size / master
address, and its teardown. Rank bootstrap (who is rank 0, which port) is the caller's job: the Ray
shell in orchestration/ or a test's process spawner.
"""

from __future__ import annotations

import datetime
import logging
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from slime_rl.trainer.cpu_compat import has_cuda
from slime_rl.trainer.rendezvous import listen_socket, store_server

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ParallelLayout:
    """Where this rank sits in the TP x PP x DP grid (Megatron order tp-cp-ep-dp-pp).

    Expert parallelism splits the experts of an MoE layer over `ep_size` ranks of the DP group: those ranks
    hold different experts and the same dense weights.
    """

    tp_size: int
    pp_size: int
    dp_size: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    ep_size: int = 1
    ep_rank: int = 0

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1


def init_parallel(
    *,
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    tp_size: int,
    pp_size: int,
    ep_size: int = 1,
    seed: int = 1234,
    timeout_s: float = 600.0,
    listener: socket.socket | None = None,
) -> ParallelLayout:
    """Join the default process group and build Megatron's TP/PP/DP groups; returns this rank's layout.

    `world_size` must be a multiple of `tp_size * pp_size`; the quotient is the DP size, which `ep_size` must
    divide (experts keep the TP split of the dense layers). Rank 0 hosts the
    group's store at `master_addr:master_port`, listening on that address only: on `listener` if given (a
    socket from `rendezvous.listen_socket` it already reported), else on a socket it binds there now.
    """
    from megatron.core import parallel_state as mpu
    from megatron.core import tensor_parallel

    if world_size % (tp_size * pp_size):
        raise ValueError(f"world_size={world_size} is not a multiple of tp*pp={tp_size * pp_size}")
    if (world_size // (tp_size * pp_size)) % ep_size:
        raise ValueError(
            f"expert parallel size {ep_size} does not divide the DP size {world_size // (tp_size * pp_size)}"
        )
    backend = "nccl" if has_cuda() else "gloo"
    if has_cuda():
        # One GPU per rank: rank i of a single-node launch takes device i; under Ray each actor sees only its
        # own GPU (CUDA_VISIBLE_DEVICES), so the modulo gives 0. NCCL refuses two ranks on one device.
        torch.cuda.set_device(rank % torch.cuda.device_count())
    timeout = datetime.timedelta(seconds=timeout_s)
    if rank == 0:  # hosts the store, on the socket it reported as the master address (or binds it now)
        store = store_server(listener or listen_socket(master_addr, master_port), world_size, timeout)
    else:
        store = dist.TCPStore(master_addr, master_port, world_size, is_master=False, timeout=timeout)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    mpu.initialize_model_parallel(
        tensor_model_parallel_size=tp_size,
        pipeline_model_parallel_size=pp_size,
        expert_model_parallel_size=ep_size,
        create_gloo_process_groups=False,  # gloo is already the default backend on CPU
    )
    torch.manual_seed(seed)
    if has_cuda():
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    layout = current_layout()
    logger.info("rank %d/%d joined (%s): %s", rank, world_size, backend, layout)
    return layout


def current_layout() -> ParallelLayout:
    """This rank's layout, read from an initialised `parallel_state`."""
    from megatron.core import parallel_state as mpu

    return ParallelLayout(
        tp_size=mpu.get_tensor_model_parallel_world_size(),
        pp_size=mpu.get_pipeline_model_parallel_world_size(),
        dp_size=mpu.get_data_parallel_world_size(),
        tp_rank=mpu.get_tensor_model_parallel_rank(),
        pp_rank=mpu.get_pipeline_model_parallel_rank(),
        dp_rank=mpu.get_data_parallel_rank(),
        ep_size=mpu.get_expert_model_parallel_world_size(),
        ep_rank=mpu.get_expert_model_parallel_rank(),
    )


def destroy_parallel() -> None:
    """Tear down Megatron's groups and the default process group (safe to call twice)."""
    from megatron.core import parallel_state as mpu

    mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
