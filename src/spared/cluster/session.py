"""Running independent tasks on a Ray cluster: connect (with the token a secured cluster needs), check that some
node can meet each task's resource request before submitting anything, retry tasks whose worker or node died,
stop tasks that run past a time limit, and relay the workers' progress events to the driver.

Ray does the scheduling, retries and runtime environments; this module only sets them up and reports clearly.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

#: Where the README explains connecting to a secured cluster.
AUTH_HELP = ("Ray clusters use token authentication by default: export RAY_AUTH_MODE=token and the cluster's token "
             "as RAY_AUTH_TOKEN=... (or RAY_AUTH_TOKEN_PATH=FILE; `ray get-auth-token` on the head node prints it) "
             "before running spared")


class ClusterError(RuntimeError):
    """The cluster cannot be reached or cannot run the tasks as requested (the message says what to change)."""


@dataclass(frozen=True)
class TaskResources:
    """What each task asks of a node.

    Attributes
    ----------
    cpus, gpus
        CPUs and GPUs (fractions allowed, e.g. ``0.5`` GPU shares one between two tasks).
    memory
        Bytes of memory reserved for the task (``None``: no reservation).
    custom
        Custom resources (``{"accelerator_type:A100": 0.001}``, a node label resource, ...).
    """

    cpus: float = 1.0
    gpus: float = 0.0
    memory: int | None = None
    custom: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.cpus > 0 or self.gpus < 0:
            raise ValueError(f"CPUs per task must be > 0 and GPUs >= 0, got {self.cpus} and {self.gpus}")
        if self.memory is not None and self.memory <= 0:
            raise ValueError(f"memory per task must be a positive number of bytes, got {self.memory}")
        bad = {k: v for k, v in self.custom.items() if not v > 0}
        if bad:
            raise ValueError(f"custom resources must be positive amounts, got {bad}")
        object.__setattr__(self, "custom", dict(self.custom))

    def request(self) -> dict[str, float]:
        """The request in Ray's resource names (``CPU``, ``GPU``, ``memory``, custom names)."""
        need = {"CPU": float(self.cpus), "GPU": float(self.gpus), "memory": float(self.memory or 0), **self.custom}
        return {k: v for k, v in need.items() if v > 0}

    def options(self) -> dict[str, Any]:
        """Keyword arguments of ``.options()`` of a Ray task."""
        out: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.memory:
            out["memory"] = int(self.memory)
        if self.custom:
            out["resources"] = dict(self.custom)
        return out


@dataclass(frozen=True)
class RaySettings:
    """How tasks run on Ray.

    Attributes
    ----------
    address
        Cluster to join: ``"host:port"`` (from a node of the cluster), ``"ray://host:10001"`` (Ray Client, from
        anywhere; needs ``ray[client]``), ``"auto"``; ``None`` starts a local Ray instance.
    resources
        Each task's request (:class:`TaskResources`).
    retries
        Times a task is run again when its worker process or node died (a task that raises is not retried).
    timeout
        Seconds one attempt of a task may run (from its start on a node) before it is stopped; ``None``: no limit.
    runtime_env
        Ray runtime environment of the tasks (``working_dir``, ``pip``, ``env_vars``, ``py_modules``, ...).
    storage
        Storage location every node reads, for files too large for the object store (see
        :mod:`spared.cluster.transfer`); ``None``: the object store.
    node_cache
        Cache folder on each node (default: ``$SPARED_NODE_CACHE`` there, else its temporary folder).
    check_resources
        Check the request against the nodes before submitting (turn off on an autoscaling cluster whose nodes
        join on demand).
    init_kwargs
        More keyword arguments of ``ray.init`` (e.g. ``num_cpus`` of a local instance).
    """

    address: str | None = None
    resources: TaskResources = field(default_factory=TaskResources)
    retries: int = 0
    timeout: float | None = None
    runtime_env: Mapping[str, Any] | None = None
    storage: str | None = None
    node_cache: str | None = None
    check_resources: bool = True
    init_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {self.retries!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds (or None), got {self.timeout}")


def require_ray() -> None:
    """Raise ``ImportError`` saying how to install Ray when it is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError as err:
        raise ImportError("the Ray executor needs Ray, which is not installed: pip install 'spared[ray]' (or run "
                          "with --executor local)") from err


def connect(settings: RaySettings) -> bool:
    """Initialise Ray for ``settings.address``, with ``settings.runtime_env`` as the job's runtime environment
    (Ray uploads local folders, ``working_dir`` and ``py_modules``, only for a job), unless it is initialised
    already; True when this call did it (the caller then shuts it down). A failure raises :class:`ClusterError`
    saying how to connect."""
    import ray

    if ray.is_initialized():
        if settings.runtime_env:
            raise ClusterError("Ray is already initialised in this process, so spared cannot set the runtime "
                               "environment of its tasks: pass runtime_env=... to your ray.init call instead")
        return False
    kwargs: dict[str, Any] = {"log_to_driver": False, **settings.init_kwargs}
    if settings.runtime_env:
        kwargs["runtime_env"] = dict(settings.runtime_env)
    if settings.address is None:
        kwargs.setdefault("include_dashboard", False)
    try:
        ray.init(address=settings.address, **kwargs)
    except Exception as err:  # ConnectionError, RuntimeError, AuthenticationError, ImportError (ray://), ...
        raise ClusterError(connection_help(settings.address, err)) from err
    return True


@contextmanager
def ray_session(settings: RaySettings) -> Iterator[None]:
    """Ray for the work in the ``with`` block: :func:`connect`, then :func:`check_resources` when
    ``settings.check_resources``; on leaving, Ray is shut down if :func:`connect` initialised it."""
    import ray

    started = connect(settings)
    try:
        if settings.check_resources:
            check_resources(settings.resources)
        yield
    finally:
        if started:
            ray.shutdown()


def connection_help(address: str | None, err: BaseException) -> str:
    """The message of a failed connection: what failed, and the settings that usually fix it."""
    chain, cause = [], err
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(f"{type(e).__name__}: {e}" for e in chain)
    where = f"the Ray cluster at {address}" if address else "a local Ray instance"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    lines = [f"could not connect to {where} ({first})"]
    if "InvalidAuthToken" in text or "AuthenticationError" in text or "Unauthenticated" in text:
        lines.append("the cluster rejected this driver's authentication token (none, or not the cluster's)")
    if address and address.startswith("ray://") and ("grpc" in text.lower() or "ray[client]" in text):
        lines.append("the ray:// form needs Ray Client: pip install 'spared[ray]' (it installs ray[client])")
    lines.append(AUTH_HELP)
    if address and not address.startswith("ray://"):
        lines.append("from a machine that is not a node of the cluster, connect with --address ray://HEAD:10001 "
                     "(Ray Client)")
    return "; ".join(lines)


def check_resources(resources: TaskResources) -> None:
    """Raise :class:`ClusterError` naming the resource when no live node can meet a task's request."""
    import ray

    nodes = {f"{node.get('NodeManagerAddress', '?')} ({str(node.get('NodeID', ''))[:8]})": node.get("Resources", {})
             for node in ray.nodes() if node.get("Alive")}
    problem = unmet_request(resources.request(), nodes)
    if problem:
        raise ClusterError(problem)


def unmet_request(need: Mapping[str, float], nodes: Mapping[str, Mapping[str, float]]) -> str | None:
    """Why no node (name → its resources) can run a task requesting ``need``, or ``None`` when one can."""
    if not nodes:
        return "the Ray cluster has no live node"
    offers = list(nodes.values())
    if any(all(offer.get(k, 0.0) >= v for k, v in need.items()) for offer in offers):
        return None
    short = {k: v for k, v in need.items() if max(offer.get(k, 0.0) for offer in offers) < v}
    if short:
        what = ", ".join(f"{_amount(k, v)} (the most any node has: "
                         f"{_amount(k, max(o.get(k, 0.0) for o in offers))})" for k, v in short.items())
        head = f"no node of the Ray cluster has {what}"
    else:
        head = f"no single node of the Ray cluster has all of {_format(need, need)} at once"
    described = "; ".join(f"{name}: {_format(offer, need)}" for name, offer in nodes.items())
    return (f"{head}, so a task requesting {_format(need, need)} would wait forever. Nodes: {described}. Lower the "
            f"request (--cpus-per-run, --gpus-per-run, --memory-per-run, --resource), add a node that has it, or "
            f"pass --no-check-resources on an autoscaling cluster that starts one on demand")


def _amount(name: str, value: float) -> str:
    return f"{value / 2**30:.1f} GiB memory" if name == "memory" else f"{value:g} {name}"


def _format(offer: Mapping[str, float], need: Mapping[str, float]) -> str:
    """The resources of ``need``'s names (and CPU/GPU) that ``offer`` holds."""
    names = list(dict.fromkeys(["CPU", "GPU", *need]))
    return ", ".join(_amount(k, float(offer.get(k, 0.0))) for k in names)


def merge_runtime_env(*envs: Mapping[str, Any] | None) -> dict[str, Any]:
    """One Ray runtime environment from several: lists (``pip``, ``py_modules``, ``excludes``) are joined without
    duplicates, mappings (``env_vars``) merged, any other field taken from the last environment that sets it.

    >>> merge_runtime_env({"pip": ["a"]}, {"pip": ["b"], "working_dir": "."})
    {'pip': ['a', 'b'], 'working_dir': '.'}
    """
    out: dict[str, Any] = {}
    for env in envs:
        for key, value in (env or {}).items():
            old = out.get(key)
            if isinstance(old, list) and isinstance(value, list):
                out[key] = list(dict.fromkeys([*old, *value]))
            elif isinstance(old, Mapping) and isinstance(value, Mapping):
                out[key] = {**old, **value}
            else:
                out[key] = list(value) if isinstance(value, list | tuple) else value
    return out


def node_identity() -> dict[str, str]:
    """Where this code runs: ``node`` (host name), ``node_ip`` and ``ray_node_id`` (in a Ray worker)."""
    import ray

    out = {"node": socket.gethostname(), "node_ip": "", "ray_node_id": ""}
    if ray.is_initialized():
        out["ray_node_id"] = ray.get_runtime_context().get_node_id()
        out["node_ip"] = ray.util.get_node_ip_address()
    return out


@dataclass(frozen=True)
class NodeSettings:
    """What a task needs besides its own arguments: the driver's spared version (a node must run the same), the
    storage location results go back through (``None``: inline), and the node cache setting."""

    version: str
    storage: str | None
    node_cache: str | None

    @classmethod
    def of(cls, settings: RaySettings) -> NodeSettings:
        from spared import __version__

        return cls(__version__, settings.storage, settings.node_cache)


def start_on_node(node: NodeSettings, events: Callable[[dict[str, Any]], None], **fields: Any) -> dict[str, str]:
    """A task's first step on its node: report ``started`` (with ``fields``, the node and this process' id),
    check that the node runs the driver's spared version, and return the node's :func:`node_identity`."""
    from spared import __version__

    identity = node_identity()
    events({"event": "started", **fields, "pid": os.getpid(), **identity})
    if __version__ != node.version:
        raise RuntimeError(f"node {identity['node']} runs spared {__version__}, the driver {node.version}: install "
                           f"the same version on every node (or ship it with --pip / --working-dir)")
    return identity


class EventSink:
    """Sends progress events from a worker to the driver's queue (picklable; a lost event never fails a task)."""

    def __init__(self, queue: Any, key: str) -> None:
        self.queue, self.key = queue, key
        self._warned = False

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait({"key": self.key, **event})
        except Exception as err:  # the driver (and its queue) went away: the task itself goes on
            if not self._warned:
                self._warned = True
                warnings.warn(f"progress events no longer reach the driver ({type(err).__name__}: {err})",
                              stacklevel=2)


@dataclass(frozen=True)
class Job:
    """One task: its key (unique), the arguments of the remote function, and the key of a job whose result it
    needs (passed as its ``prerequisite`` argument; Ray starts it once that result exists)."""

    key: str
    args: tuple[Any, ...]
    after: str | None = None


@dataclass
class Outcome:
    """How a job ended: its value, or the error that stopped it (after retries), with attempts and node."""

    key: str
    value: Any = None
    error: BaseException | None = None
    attempts: int = 0
    node: dict[str, str] = field(default_factory=dict)


def run_tasks(function: Callable[..., Any], jobs: Sequence[Job], settings: RaySettings,
              progress: Callable[[dict[str, Any]], None] | None = None, poll: float = 0.5) -> Iterator[Outcome]:
    """Run ``function(*job.args, prerequisite, events)`` as a Ray task per job; yield outcomes as they end.

    ``events`` is an :class:`EventSink` the task reports to; a ``started`` event (sent by the task when it
    begins, with ``node`` and ``pid``) counts an attempt and starts the attempt's clock for ``settings.timeout``.
    Every event (with ``attempt`` added to ``started``) is passed on to ``progress``.
    """
    import ray
    from ray.util.queue import Queue

    queue = Queue(actor_options={"num_cpus": 0})
    remote = ray.remote(function).options(max_retries=settings.retries, retry_exceptions=False,
                                          **settings.resources.options())
    needed = {job.after for job in jobs if job.after}
    refs: dict[str, Any] = {}  # results other jobs need
    pending: dict[Any, Job] = {}
    for job in jobs:
        ref = remote.remote(*job.args, refs.get(job.after or ""), EventSink(queue, job.key))
        pending[ref] = job
        if job.key in needed:
            refs[job.key] = ref
    send = progress or (lambda event: None)
    attempts: Counter[str] = Counter()
    started: dict[str, float] = {}
    nodes: dict[str, dict[str, str]] = {}
    stopped: set[str] = set()
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=poll)
            for event in queue.get_nowait_batch(queue.qsize()):
                key = event.pop("key")
                if event.get("event") == "started":
                    attempts[key] += 1
                    started[key] = time.monotonic()
                    nodes[key] = {k: str(event.get(k, "")) for k in ("node", "node_ip", "ray_node_id")}
                    event["attempt"] = attempts[key]
                send(event)
            if settings.timeout is not None:
                now = time.monotonic()
                for ref, job in pending.items():
                    if job.key in started and job.key not in stopped and now - started[job.key] > settings.timeout:
                        stopped.add(job.key)
                        ray.cancel(ref, force=True)
            for ref in done:
                job = pending.pop(ref)
                outcome = Outcome(job.key, attempts=attempts[job.key], node=nodes.get(job.key, {}))
                try:
                    outcome.value = ray.get(ref)
                except ray.exceptions.RayError as err:
                    outcome.error = (TimeoutError(f"stopped after {settings.timeout:g} s, the time limit of one run "
                                                  f"(--timeout)") if job.key in stopped else task_error(err))
                yield outcome
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        queue.shutdown()


def task_error(err: BaseException) -> BaseException:
    """The exception to report for a failed task: the task's own exception when it raised one (not Ray's wrapper
    with the remote traceback), with a hint when the node lacks spared."""
    cause = getattr(err, "cause", None)
    found = cause if isinstance(cause, BaseException) else err
    if isinstance(found, ModuleNotFoundError) and found.name and found.name.split(".")[0] == "spared":
        return ModuleNotFoundError("spared is not installed on the node that ran the task; install it there, or ship "
                                   "it with the runtime environment (--pip 'spared[ray]' or --working-dir)")
    return found
