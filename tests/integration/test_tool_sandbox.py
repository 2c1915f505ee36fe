"""The tool sandbox against real misbehaving tools: one per limit, each a real child process.

Each test asserts what happened (kind of failure, process gone, directory gone, server never reached),
never how long it took.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from slime_rl.config.tools import ToolsConfig
from slime_rl.rollout.tools.isolation import Confinement
from slime_rl.rollout.tools.python_runner import PythonTool
from slime_rl.rollout.tools.sandbox import Sandbox


def run_python(code: str, cfg: ToolsConfig | None = None):
    return asyncio.run(PythonTool(Sandbox(cfg or ToolsConfig()))(textwrap.dedent(code)))


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_python_tool_returns_stdout_and_removes_its_directory():
    result = run_python("import os\nprint(6 * 7)\nprint(os.getcwd())")
    assert result.is_ok, result.message
    answer, workdir = result.output.splitlines()
    assert answer == "42"
    assert Path(workdir).name.startswith("slime-rl-tool-")
    assert not Path(workdir).exists()


def test_python_tool_sees_a_minimal_environment():
    result = run_python("import os\nprint(sorted(os.environ))")
    assert result.output.strip() == "['HOME', 'LANG', 'PATH', 'TMPDIR']"


def test_hanging_tool_is_killed_with_its_children_at_the_timeout():
    result = run_python(
        """
        import os, subprocess, time
        child = subprocess.Popen(["sleep", "600"])
        print(os.getpid(), child.pid, os.getcwd(), flush=True)
        time.sleep(600)
        """,
        ToolsConfig(timeout_s=2.0),
    )
    assert result.error_kind == "timeout"
    assert result.policy_text().startswith("error (timeout): no result within 2 s")
    tool_pid, child_pid, workdir = result.output.split()
    assert is_gone(int(tool_pid))
    assert is_gone(int(child_pid))
    assert not Path(workdir).exists()


def test_tool_over_the_memory_limit_fails_with_memory():
    result = run_python("block = bytearray(1024 ** 3)\nprint('allocated')", ToolsConfig(memory_mb=256))
    assert result.error_kind == "memory"
    assert "allocated" not in result.output
    assert "limit 256 MiB" in result.message


def test_tool_printing_megabytes_is_cut_at_the_output_cap():
    result = run_python(
        "import sys\nwhile True:\n    sys.stdout.write('x' * 1048576)", ToolsConfig(max_output_bytes=4096)
    )
    assert result.error_kind == "output_limit"
    assert 0 < len(result.output) <= 4096


def test_crashing_tool_reports_the_exception():
    result = run_python("raise RuntimeError('boom at step 3')")
    assert result.error_kind == "crash"
    assert result.message.startswith("exit code 1.")
    assert "RuntimeError: boom at step 3" in result.message


def test_tool_killed_by_a_signal_reports_it():
    result = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)")
    assert result.error_kind == "crash"
    assert result.message.startswith("killed by SIGSEGV")


@pytest.fixture
def loopback_server():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        yield server


def assert_never_connected(server: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        server.accept()


def test_tool_cannot_connect_to_a_loopback_server(loopback_server):
    port = loopback_server.getsockname()[1]
    result = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5)\nprint('in')")
    assert result.error_kind == "network"
    assert "in" not in result.output
    assert_never_connected(loopback_server)


@pytest.mark.parametrize("use_seccomp", [False, True], ids=["network_namespace", "seccomp"])
def test_each_network_block_alone_stops_a_loopback_connection(loopback_server, use_seccomp):
    support = asyncio.run(Sandbox(ToolsConfig()).isolation())
    if not (support.has_seccomp if use_seccomp else support.has_network_namespace):
        pytest.skip(f"this kernel refuses the mechanism ({support.describe()})")
    confinement = Confinement(
        memory_bytes=512 << 20,
        cpu_s=30,
        file_bytes=1 << 20,
        use_network_namespace=not use_seccomp,
        use_seccomp=use_seccomp,
    )
    port = loopback_server.getsockname()[1]
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5)"
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], preexec_fn=confinement, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    expected = "Operation not permitted" if use_seccomp else "Network is unreachable"
    assert expected in proc.stderr
    assert_never_connected(loopback_server)


def test_sandbox_reports_a_network_block_on_this_machine():
    support = asyncio.run(Sandbox(ToolsConfig()).check_isolation())
    assert support.is_isolated
