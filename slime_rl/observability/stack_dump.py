"""Stack dumps of a run: this process's threads and every Python process it started, into one folder.

Owns finding the run's processes (the descendants of this process: on a local Ray that is the GCS, the
raylet, Ray's agents, the workers that host actors and whatever those actors started, such as engine
servers), dumping each Python one with py-spy, and a summary of what was running. Deciding *when* to
dump is the watchdog's job. A joined Ray cluster's processes on other nodes are not descendants of the
driver and are not dumped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import traceback
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil

PYSPY_TIMEOUT_S = 30.0  # py-spy pauses a process while it reads it; a healthy dump takes well under a second
MAX_PARALLEL_DUMPS = 4
# A Ray worker's title while an actor task runs: `ray::ClassName.method` (idle: `ray::ClassName`, `ray::IDLE`).
RAY_TASK_TITLE = re.compile(r"^ray::(\w+\.\w+)")
PYTHON_EXE = re.compile(r"^python[\d.]*$")


@dataclass(frozen=True, slots=True)
class RunProcess:
    """One descendant of the driver as seen at dump time."""

    pid: int
    ppid: int
    title: str  # the command line, or the title a process set for itself (Ray: `ray::Class.method`)
    label: str  # short name for its stack file: the Ray title, the script or `-m` module, or the executable
    status: str  # psutil status: running, sleeping, disk-sleep, zombie, ...
    is_python: bool  # py-spy can read it

    @property
    def running_task(self) -> str | None:
        """`Class.method` of the Ray actor task this process runs, if it is a Ray worker inside one."""
        match = RAY_TASK_TITLE.match(self.title)
        return match.group(1) if match else None

    @property
    def file_name(self) -> str:
        return f"{self.pid}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', self.label)[:60]}.txt"


@dataclass(frozen=True, slots=True)
class StackDump:
    """What `write_stack_dump` wrote: the folder, the processes it found and the Ray tasks that were running."""

    folder: Path
    processes: list[RunProcess]
    running_tasks: str  # e.g. "Sleeper.hang (pid 123); TrainActor.train (pids 7, 8)", or "none"


def thread_stacks() -> str:
    """The current Python stack of every thread of this process, main thread first, innermost call last."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    frames = sorted(sys._current_frames().items(), key=lambda item: item[0] != threading.main_thread().ident)
    return "\n".join(
        f'Thread {ident} "{names.get(ident, "?")}":\n' + "".join(traceback.format_stack(frame))
        for ident, frame in frames
    )


def process_label(cmdline: list[str], name: str) -> str:
    """`ray::Class.method`, `monitor.py`, `sglang_router.launch_router`, `python-c`, `raylet`: what runs there."""
    if not cmdline or not PYTHON_EXE.match(Path(cmdline[0]).name):
        return Path(cmdline[0]).name if cmdline else name
    args = iter(cmdline[1:])
    for arg in args:
        if arg in ("-m", "-c"):
            return next(args, "") if arg == "-m" else "python-c"
        if not arg.startswith("-"):
            return Path(arg).name
    return "python"


def run_processes() -> list[RunProcess]:
    """Every live descendant of this process, parents before their children."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            with proc.oneshot():
                cmdline = [part for part in proc.cmdline() if part]
                found.append(
                    RunProcess(
                        pid=proc.pid,
                        ppid=proc.ppid(),
                        title=" ".join(" ".join(cmdline).split()) or proc.name(),  # one line, also for `-c` code
                        label=process_label(cmdline, proc.name()),
                        status=proc.status(),
                        is_python=bool(PYTHON_EXE.match(Path(proc.exe()).name)),
                    )
                )
        except psutil.Error:
            continue  # it ended while we looked (or is not ours to read: then py-spy could not read it either)
    return found


def pyspy_path() -> str | None:
    """The py-spy binary: next to this interpreter (a virtualenv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def pyspy_dump(pid: int, pyspy: str | None) -> str:
    """py-spy's dump of `pid`'s Python threads, or why there is none (py-spy missing, failed or timed out)."""
    if pyspy is None:
        return "no stacks: py-spy is not installed (it comes with ray[default]; `pip install py-spy`)\n"
    try:
        done = subprocess.run(
            [pyspy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=PYSPY_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return f"no stacks: py-spy did not finish within {PYSPY_TIMEOUT_S:.0f} s\n"
    if done.returncode != 0:
        # Needs ptrace rights over the process: root, the same user with ptrace_scope 0, or CAP_SYS_PTRACE.
        return f"no stacks: py-spy exited with {done.returncode}:\n{done.stderr}{done.stdout}"
    return done.stdout


def running_tasks(processes: list[RunProcess]) -> str:
    """The Ray actor tasks running at dump time, grouped by `Class.method`, with their worker PIDs."""
    pids: dict[str, list[int]] = defaultdict(list)
    for proc in processes:
        if proc.running_task:
            pids[proc.running_task].append(proc.pid)
    if not pids:
        return "none"
    return "; ".join(
        f"{task} (pid{'s' if len(ps) > 1 else ''} {', '.join(map(str, ps))})" for task, ps in sorted(pids.items())
    )


def process_tree(root_pid: int, processes: list[RunProcess]) -> Iterator[str]:
    """One line per process, indented under its parent, naming the file that holds its stacks."""
    children: dict[int, list[RunProcess]] = defaultdict(list)
    for proc in processes:
        children[proc.ppid].append(proc)

    def walk(pid: int, depth: int) -> Iterator[str]:
        for proc in children.get(pid, []):
            where = proc.file_name if proc.is_python else "not Python, no stacks"
            yield f"{'  ' * depth}{proc.pid} [{proc.status}] {proc.title[:160]}  -> {where}"
            yield from walk(proc.pid, depth + 1)

    yield from walk(root_pid, 1)


def write_stack_dump(folder: Path, headline: list[str]) -> StackDump:
    """Write `driver.txt`, one `<pid>_<name>.txt` per Python descendant and `summary.txt` into `folder`.

    `summary.txt` starts with `headline` (the caller's account of why it dumps), then the running Ray tasks
    and the process tree.
    """
    folder.mkdir(parents=True, exist_ok=False)
    (folder / "driver.txt").write_text(thread_stacks())
    processes = run_processes()
    pyspy = pyspy_path()
    python = [proc for proc in processes if proc.is_python]
    with ThreadPoolExecutor(MAX_PARALLEL_DUMPS) as pool:
        for proc, text in zip(python, pool.map(lambda p: pyspy_dump(p.pid, pyspy), python), strict=True):
            (folder / proc.file_name).write_text(f"{proc.title}\n\n{text}")
    tasks = running_tasks(processes)
    me = psutil.Process()
    lines = [
        *headline,
        f"running Ray tasks: {tasks}",
        "",
        "processes (stack files in this folder):",
        f"  {me.pid} [driver] {' '.join(me.cmdline())[:160]}  -> driver.txt",
        *process_tree(me.pid, processes),
    ]
    (folder / "summary.txt").write_text("\n".join(lines) + "\n")
    return StackDump(folder, processes, tasks)
