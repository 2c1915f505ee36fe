"""The weight-update process group of the SGLang protocol: how each rank builds and leaves its end.

The group joins the trainer (rank 0, which hosts the TCPStore) with every rank of every engine (rank
`rank_offset + tp_rank`), beside each process's own default group. SGLang builds an engine rank's end in
`init_custom_process_group` (python/sglang/srt/utils/common.py, read in 0.5.15.post1 and 0.5.23): torch's
`tcp://` rendezvous gives a client of rank 0's store, the store is wrapped in `PrefixStore(group_name)`,
and torch's `_new_process_group_helper` builds the group on it, prefixing every key again with
`{group_name}/` and then with the backend's device. All ranks must build their end this way: a rank
whose keys differ (a bare `ProcessGroupGloo` on the bare store, say) never meets the others and waits
until its timeout.

The helper registers the group in torch's process-group registry under `group_name`, so a process can
hold one group of a given name at a time; `leave_group` removes it from the registry. The helper would
split an NCCL group from the default group's communicator if the default group were bound to a device
(`init_process_group(device_id=...)`); neither the trainer (trainer/parallel.py) nor the native engine
(it has no default group) binds one, and a group that spans other processes must not be split.

It owns no store server: rank 0 makes its own (trainer/rendezvous.py binds it to one address).
"""

from __future__ import annotations

from datetime import timedelta

import torch.distributed as dist
from torch.distributed.distributed_c10d import (
    Backend,
    PrefixStore,
    _abort_process_group,
    _new_process_group_helper,
    _world,
    rendezvous,
)


def connect_store(
    master_address: str, master_port: int, *, rank: int, world_size: int, timeout: timedelta
) -> dist.Store:
    """A client of rank 0's TCPStore at `master_address:master_port`, made by torch's `tcp://` rendezvous."""
    host = f"[{master_address}]" if ":" in master_address else master_address  # an IPv6 address in a URL
    store, _rank, _world_size = next(rendezvous(f"tcp://{host}:{master_port}", rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    return store


def new_group(
    store: dist.Store, *, rank: int, world_size: int, group_name: str, backend: str, timeout: timedelta
) -> dist.ProcessGroup:
    """This rank's end of weight-update group `group_name` on `store` (rank 0's TCPStore or a client of it).

    Blocks until every rank has joined, or raises once `timeout` has passed.
    """
    prefixed = PrefixStore(group_name, store)
    group, _store = _new_process_group_helper(
        world_size, rank, [], Backend(backend), prefixed, group_name=group_name, timeout=timeout
    )
    # The group's ranks are its own, not the default group's; torch's destroy_process_group needs the entry.
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def leave_group(group: dist.ProcessGroup, *, abort: bool = False) -> None:
    """Shut `group` down and unregister it, so that its name can be used again.

    Its pending gloo operations still run until their peers leave or they time out, and releasing a gloo
    group joins them: hold a reference until they have ended. `abort` ends pending NCCL collectives,
    which do not notice peers that leave.
    """
    if abort:
        _abort_process_group(group)
    else:
        dist.destroy_process_group(group)
