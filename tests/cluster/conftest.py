"""Fixtures of the cluster-launch tests. Each fixture is self-contained; every daemon it starts it stops by PID.

`ray_job_head`: a Ray head with its job server on 127.0.0.1, token auth on, private ports and temp dir.

`slurm_cluster`: a private one-node Slurm (slurmctld + slurmd, 127.0.0.1 only) with its own munged, configured
in a temporary folder; it never touches a system munged, slurm.conf or state directory. It needs Debian's
`slurm-wlm` and `munge` (`.ci/install_slurm.sh` installs them) and root (slurmd starts job steps as their
user); without them the tests that use it are skipped and say why.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from slime_rl.processes import free_port, log_tail, process_tree, spawn, stop

SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scancel", "scontrol", "sinfo")
VENV_BIN = str(Path(sys.executable).parent)  # the jobs' `python`, `ray` and `slime-rl`
JOB_FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "PURGED"}


def slurm_skip_reason() -> str | None:
    """Why a private Slurm cannot start here, or None."""
    missing = [name for name in SLURM_BINARIES if shutil.which(name) is None]
    if missing:
        return f"Slurm is not installed (missing {', '.join(missing)}); install with .ci/install_slurm.sh"
    if os.geteuid() != 0:
        return "a private slurmd must run as root (it starts job steps as the submitting user)"
    return None


def slurm_conf(base: Path, node: str, ctld_port: int, slurmd_port: int, munge_socket: Path) -> str:
    """A one-node slurm.conf: every daemon on 127.0.0.1 at private ports, state and logs under `base`."""
    user = getpass.getuser()
    return f"""\
ClusterName=slimetest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
# Bind the daemons to their own address (127.0.0.1), not to every interface.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser={user}
SlurmdUser=root
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# Seconds between scancel's SIGTERM and SIGKILL: room for train.sbatch's cleanup (Ray drains for up to 30 s).
KillWait=60
MinJobAge=3600
NodeName={node} NodeAddr=127.0.0.1 CPUs=2 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """A running private Slurm; client commands need `env` (it points SLURM_CONF at the private config)."""

    base: Path
    node: str
    env: dict[str, str]
    job_ids: list[str] = field(default_factory=list)

    def command(self, *argv: str) -> str:
        return subprocess.run(argv, env=self.env, check=True, capture_output=True, text=True, timeout=30).stdout

    def sbatch(self, script: Path, args: list[str], *, output: Path, cwd: Path, env: dict[str, str]) -> str:
        """Submit `script args` from `cwd` with `env` (plus SLURM_CONF); returns the job id."""
        out = subprocess.run(
            ["sbatch", "--parsable", f"--output={output}", str(script), *args],
            env=env | {"SLURM_CONF": self.env["SLURM_CONF"]},
            cwd=cwd,
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        job_id = out.strip().split(";")[0]
        self.job_ids.append(job_id)
        return job_id

    @contextmanager
    def submitted(
        self, script: Path, args: list[str], *, output: Path, cwd: Path, env: dict[str, str]
    ) -> Iterator[str]:
        """`sbatch` for the block; a job still running after it (a failed test) is cancelled and awaited."""
        job_id = self.sbatch(script, args, output=output, cwd=cwd, env=env)
        try:
            yield job_id
        finally:
            self.cancel_unfinished([job_id])

    def cancel_unfinished(self, job_ids: list[str], timeout_s: float = 120) -> None:
        for job_id in job_ids:
            if self.job_state(job_id) not in JOB_FINAL_STATES:
                self.command("scancel", job_id)
                self.wait_job(job_id, timeout_s)

    def job_state(self, job_id: str) -> str:
        """PENDING, RUNNING, ..., COMPLETED; PURGED once `scontrol` forgot the finished job (after MinJobAge,
        an hour here, so a session's teardown still sees its jobs)."""
        shown = subprocess.run(
            ["scontrol", "show", "job", "--oneliner", job_id],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if shown.returncode != 0 and "Invalid job id" in shown.stderr:
            return "PURGED"
        shown.check_returncode()
        line = shown.stdout
        match = re.search(r"\bJobState=(\S+)", line)
        assert match, f"no JobState in: {line}"
        return match.group(1)

    def wait_job(self, job_id: str, timeout_s: float) -> str:
        """The job's final state; fails the test if it is still running after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while (state := self.job_state(job_id)) not in JOB_FINAL_STATES:
            assert time.monotonic() < deadline, f"job {job_id} still {state} after {timeout_s:.0f} s"
            time.sleep(0.5)
        return state


def _start_munged(base: Path) -> tuple[subprocess.Popen, Path]:
    """munged in the foreground with a private key, socket, pid and seed file; returns it and its socket."""
    munge_dir = base / "munge"
    munge_dir.mkdir()
    munge_dir.chmod(0o755)  # munged insists that everyone can reach its socket
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    munge_socket = munge_dir / "munge.socket"
    proc = spawn(
        [
            "munged", "--foreground",
            f"--socket={munge_socket}",
            f"--key-file={key}",
            f"--pid-file={munge_dir}/munged.pid",
            f"--seed-file={munge_dir}/munged.seed",
            f"--log-file={munge_dir}/munged.log",
        ],
        log_path=str(munge_dir / "munged.out"),
    )  # fmt: skip
    _wait_for(lambda: munge_socket.exists(), 10, proc, munge_dir / "munged.out", "munged socket")
    return proc, munge_socket


def _wait_for(ready, timeout_s: float, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: the daemon exited with code {proc.returncode}; log:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s; log:\n{log_tail(log)}")
        time.sleep(0.2)


def _node_idle(env: dict[str, str]) -> bool:
    out = subprocess.run(["sinfo", "--noheader", "--format=%t"], env=env, capture_output=True, text=True, timeout=10)
    return out.returncode == 0 and out.stdout.strip() == "idle"


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A one-node Slurm on 127.0.0.1 (2 CPUs) with its own munged, for the session; all stopped by PID after."""
    reason = slurm_skip_reason()
    if reason:
        pytest.skip(reason)
    # Not pytest's tmp_path: munged needs every folder above its socket to be searchable by everyone.
    base = Path(tempfile.mkdtemp(prefix="slime-slurm-", dir="/tmp"))
    base.chmod(0o755)
    for name in ("state", "spool", "log"):
        (base / name).mkdir()
    node = socket.gethostname().split(".")[0]
    daemons: list[subprocess.Popen] = []
    try:
        munged, munge_socket = _start_munged(base)
        daemons.append(munged)
        conf = base / "slurm.conf"
        conf.write_text(slurm_conf(base, node, free_port(), free_port(), munge_socket))
        env = os.environ | {"SLURM_CONF": str(conf)}
        # Foreground daemons (-D): the PIDs are ours. slurmctld -i: a fresh state directory, nothing to recover.
        daemons.append(spawn(["slurmctld", "-D", "-i"], log_path=str(base / "log/slurmctld.out"), env=env))
        daemons.append(spawn(["slurmd", "-D", "-N", node], log_path=str(base / "log/slurmd.out"), env=env))
        _wait_for(lambda: _node_idle(env), 30, daemons[-1], base / "log/slurmd.log", "the Slurm node (sinfo idle)")
        cluster = SlurmCluster(base, node, env)
        try:
            yield cluster
        finally:
            cluster.cancel_unfinished(cluster.job_ids)  # a job's processes outlive slurmd: end jobs first
    finally:
        for proc in reversed(daemons):
            stop(proc)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class RayHead:
    """A running `ray start --head` with its job server, on 127.0.0.1, token auth on."""

    job_server: str  # http://127.0.0.1:PORT
    token: str
    temp_dir: Path  # Ray's sessions, logs and uploaded working dirs
    env: dict[str, str]  # what the head runs with: PATH to the venv, loopback only, the token


def _job_server_ready(url: str, token: str) -> bool:
    request = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def ray_job_head() -> Iterator[RayHead]:
    """A one-node Ray head (2 CPUs) with its dashboard's job server, for the module; stopped by PID after.

    Every Ray listener binds 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), the ports Ray would otherwise fix
    (client server, dashboard agent) are free ones, and the temp dir is private and short (Unix socket paths).
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="slime-ray-", dir="/tmp"))
    token = secrets.token_hex(32)
    env = os.environ | {
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("RAY_ADDRESS", None)
    dashboard_port = free_port()
    argv = [
        f"{VENV_BIN}/ray", "start", "--head", "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={free_port()}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        "--num-cpus=2", "--num-gpus=0",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]  # fmt: skip
    log = temp_dir / "ray-head.out"
    head = spawn(argv, log_path=str(log), env=env)
    try:
        url = f"http://127.0.0.1:{dashboard_port}"
        _wait_for(lambda: _job_server_ready(url, token), 90, head, log, "Ray's job server")
        yield RayHead(url, token, temp_dir, env)
    finally:
        ray_processes = process_tree(head.pid)
        stop(head, timeout_s=60)  # SIGTERM: `ray start --block` drains, then stops every Ray process it started
        for proc in ray_processes:  # and any it missed, by PID
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(ray_processes, timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
