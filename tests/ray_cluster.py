"""A real multi-node Ray cluster on this machine for tests: one ``ray start --head`` and more ``ray start
--address`` nodes, each with its own working directory, temporary folder and ports, secured by a token.

Every node is a ``ray start --block`` process started here; :meth:`LocalRayCluster.stop` terminates those
processes by their ids (Ray's fate sharing takes their raylets, object stores and workers with them) and kills,
by id, any of their descendants still alive. Nothing else on the machine is touched (``ray stop`` would stop
every Ray instance of the user).

>>> with LocalRayCluster(tmp_path, nodes=2, cpus=1) as cluster:      # doctest: +SKIP
...     subprocess.run(["spared", "bench", "--executor", "ray", "--address", cluster.address], env=cluster.env)
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
#: What ``ray start`` prints once its node runs.
READY = "Ray runtime started"


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state, parent, ..., start time at [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[tuple[int, str]]:
    """Every process below ``pid`` as (id, start time): the start time tells a reused id from the process."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            fields = _stat(child)
            if fields is not None:
                out.append((child, fields[19]))
                todo.append(child)
    return out


def alive(pid: int, started: str | None = None) -> bool:
    """Whether ``pid`` is a running (not zombie) process, started at ``started`` when given."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and (started is None or fields[19] == started)


class LocalRayCluster:
    """``nodes`` Ray nodes of ``cpus`` CPUs each (no GPU), rooted in ``root``.

    Attributes
    ----------
    address
        ``host:port`` of the head's GCS (what ``--address`` takes on a node of the cluster).
    client_address
        ``ray://host:port`` of the head's Ray Client server (what ``--address`` takes from elsewhere; empty
        without ``ray[client]``).
    env
        Environment for a driver: the token settings (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``) and this
        checkout's sources first on ``PYTHONPATH``.
    node_dirs
        Working directory of each node; its ``tmp`` subfolder is the node's ``TMPDIR``. (Ray's own session folders
        are short-named folders in the system's temporary folder, removed by :meth:`stop`.)
    """

    def __init__(self, root: str | Path, nodes: int = 2, cpus: int = 1, object_store_mb: int = 100) -> None:
        self.root = Path(root)
        self.n_nodes, self.cpus, self.object_store_mb = nodes, cpus, object_store_mb
        src = str(Path(__file__).resolve().parents[1] / "src")
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.address = self.client_address = ""
        self.node_dirs: list[Path] = []
        self.ray_dirs: list[Path] = []
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> LocalRayCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_node(self, index: int, head: bool) -> None:
        folder = self.root / ("head" if head else f"node{index}")
        (folder / "tmp").mkdir(parents=True, exist_ok=True)
        # Ray's session folder holds sockets, whose paths must stay under 108 bytes: a short folder in /tmp
        self.ray_dirs.append(Path(tempfile.mkdtemp(prefix="ray")))
        args = [RAY, "start", "--block", f"--num-cpus={self.cpus}", "--num-gpus=0", "--node-ip-address=127.0.0.1",
                f"--temp-dir={self.ray_dirs[-1]}", f"--object-store-memory={self.object_store_mb * 2**20}",
                "--disable-usage-stats"]
        ports = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
                 "--dashboard-agent-grpc-port", "--dashboard-agent-listen-port", "--runtime-env-agent-port")
        args += [f"{flag}={free_port()}" for flag in ports]
        if head:
            port = free_port()
            self.address = f"127.0.0.1:{port}"
            args += ["--head", f"--port={port}", "--include-dashboard=false", f"--dashboard-port={free_port()}"]
            if importlib.util.find_spec("grpc") is not None:  # Ray Client is installed (ray[client])
                client = free_port()
                self.client_address = f"ray://127.0.0.1:{client}"
                args.append(f"--ray-client-server-port={client}")
        else:
            args += [f"--address={self.address}"]
        env = {**self.env, "TMPDIR": str(folder / "tmp")}
        with open(folder / "ray_start.log", "w") as log:  # the process keeps its own copy of the descriptor
            self.processes.append(subprocess.Popen(args, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                   start_new_session=True))
        self.node_dirs.append(folder)

    def start(self, timeout: float = 120.0) -> None:
        """Start the head, then the other nodes, each time waiting until ``ray start`` says the node runs."""
        deadline = time.monotonic() + timeout
        self._start_node(0, head=True)
        self._wait(deadline)
        for index in range(1, self.n_nodes):
            self._start_node(index, head=False)
        self._wait(deadline)

    def _wait(self, deadline: float) -> None:
        """Wait until every node's ``ray start`` log says ``Ray runtime started``."""
        while True:
            logs = [(folder / "ray_start.log").read_text() for folder in self.node_dirs]
            if all(READY in log for log in logs):
                return
            for proc, log in zip(self.processes, logs, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start exited ({proc.returncode}):\n{log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Ray cluster did not come up; logs under {self.root}")
            time.sleep(0.2)

    def stop(self, timeout: float = 30.0) -> None:
        """Terminate the nodes this object started (workers first, head last), then kill by id what survived."""
        tree = {proc.pid: descendants(proc.pid) for proc in self.processes}
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout)
        for pid, started in (p for pids in tree.values() for p in pids):
            if alive(pid, started):
                os.kill(pid, signal.SIGKILL)
        self.processes.clear()
        for folder in self.ray_dirs:
            shutil.rmtree(folder, ignore_errors=True)

    def pids(self) -> list[int]:
        """Every process of the cluster now alive: the ``ray start`` processes and their descendants."""
        out = [proc.pid for proc in self.processes if proc.poll() is None]
        return [pid for pid in out + [d for pid in out for d, _ in descendants(pid)] if alive(pid)]

    def task_processes(self, function: str) -> dict[int, Path]:
        """Worker processes of this cluster running a task of ``function`` now (Ray titles them
        ``ray::<function>``), each with its node's working folder."""
        out = {}
        for pid in self.pids():
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
                cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            except OSError:
                continue
            if title.split(" ", 1)[0] == f"ray::{function}" and cwd in self.node_dirs:
                out[pid] = cwd
        return out
