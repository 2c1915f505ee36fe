"""Ray cluster and placement settings (`cluster` group)."""

from dataclasses import dataclass

from slime_rl.errors import ConfigError


@dataclass
class ClusterConfig:
    # Ray address to join ("auto" or "host:port"); None starts a fresh local Ray that listens on 127.0.0.1 only.
    # Joining uses the cluster's token auth: set RAY_AUTH_MODE=token and the token in RAY_AUTH_TOKEN,
    # RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (`ray get-auth-token` on the head node prints it).
    address: str | None = None
    num_cpus: int = 2  # logical CPUs per node of a local or described cluster; set explicitly (Ray's default stalls)
    num_gpus: int = 0  # GPUs per node of a local or described cluster
    # Nodes of a described cluster (address null), each with num_cpus and num_gpus: what `slime-rl plan` plans for
    # without a cluster. A local Ray is one node, so training needs 1 here (or cluster.address). A joined
    # cluster (address set) is read from Ray; then num_nodes, num_cpus and num_gpus are not used.
    num_nodes: int = 1
    object_store_memory_mb: int = 256  # MiB for a local Ray's object store (>= 75)
    include_dashboard: bool = False  # start Ray's dashboard on a local Ray (127.0.0.1; needs the token too)
    colocate: bool = False  # True: engines and trainer share devices; False: disaggregated pools

    def __post_init__(self) -> None:
        if self.num_cpus < 1:
            raise ConfigError(f"cluster.num_cpus must be >= 1, got {self.num_cpus}")
        if self.num_nodes < 1:
            raise ConfigError(f"cluster.num_nodes must be >= 1, got {self.num_nodes}")
        if self.num_gpus < 0:
            raise ConfigError(f"cluster.num_gpus must be >= 0, got {self.num_gpus}")
        if self.object_store_memory_mb < 75:
            raise ConfigError(
                f"cluster.object_store_memory_mb={self.object_store_memory_mb} is below Ray's minimum of 75 MiB; "
                "set cluster.object_store_memory_mb=256 or more"
            )
