"""Command-line options of the Ray executor, shared by ``spared bench`` and ``spared prepare``, and their parsing
into :class:`spared.cluster.session.RaySettings`."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from spared.cli.app import fail

PANEL = "Ray executor (--executor ray)"

AddressOption = Annotated[str | None, typer.Option(
    help="Ray cluster: HOST:PORT from a node of the cluster, ray://HOST:10001 from any machine (Ray Client); "
         "default: a local Ray instance. A secured cluster needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN.",
    rich_help_panel=PANEL)]
CpusOption = Annotated[float, typer.Option(help="CPUs each task requests.", rich_help_panel=PANEL)]
GpusOption = Annotated[float, typer.Option(help="GPUs each task requests (fractions share a GPU).",
                                           rich_help_panel=PANEL)]
MemoryOption = Annotated[str | None, typer.Option(help="Memory each task reserves, e.g. 8GiB, 500MB.",
                                                  rich_help_panel=PANEL)]
ResourceOption = Annotated[list[str] | None, typer.Option(
    "--resource", help="A custom Ray resource each task needs, NAME=AMOUNT (repeatable).", rich_help_panel=PANEL)]
RetriesOption = Annotated[int, typer.Option(help="Times a task is started again when its worker process or node "
                                                 "died.", rich_help_panel=PANEL)]
TimeoutOption = Annotated[float | None, typer.Option(help="Seconds one attempt of a task may run on its node before "
                                                          "it is stopped and recorded as failed.",
                                                     rich_help_panel=PANEL)]
RuntimeEnvOption = Annotated[str | None, typer.Option(
    help="Ray runtime environment of the tasks: JSON text, or a .json/.toml file (env_vars, py_modules, conda, ...).",
    rich_help_panel=PANEL)]
WorkingDirOption = Annotated[Path | None, typer.Option(
    help="Folder uploaded to every task as its working directory (Ray's runtime environment working_dir).",
    rich_help_panel=PANEL)]
PipOption = Annotated[list[str] | None, typer.Option(
    "--pip", help="A pip requirement installed for the tasks (repeatable), e.g. spared==0.1.0.",
    rich_help_panel=PANEL)]
StorageOption = Annotated[str | None, typer.Option(
    help="A path or URI every node can read (s3://, gs://, hdfs://, a network mount): datasets and results travel "
         "through it instead of Ray's object store (for data too large for it).", rich_help_panel=PANEL)]
NodeCacheOption = Annotated[str | None, typer.Option(
    help="Cache folder on each node (default: $SPARED_NODE_CACHE there, else its temporary folder).",
    rich_help_panel=PANEL)]
CheckOption = Annotated[bool, typer.Option(
    "--check-resources/--no-check-resources",
    help="Check before submitting that some node can meet each task's request (turn off on an autoscaling "
         "cluster that starts nodes on demand).", rich_help_panel=PANEL)]

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """``"8GiB"`` → 8589934592; decimal (kB, MB, GB, TB) and binary (KiB, MiB, GiB, TiB) units, or plain bytes."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    unit = found.group(2).lower() if found else ""
    if not found or unit not in _UNITS or not float(found.group(1)) > 0:
        raise ValueError(f"--memory-per-run takes a positive size like 8GiB, 500MB or 1000000 (bytes), got {text!r}")
    return int(float(found.group(1)) * _UNITS[unit])


def parse_resources(items: list[str] | None) -> dict[str, float]:
    """``["NAME=AMOUNT", ...]`` → ``{NAME: AMOUNT}``."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, amount = item.rpartition("=")
        try:
            out[name.strip()] = float(amount)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--resource takes NAME=AMOUNT (e.g. accelerator_type:A100=0.001), got {item!r}")
    return out


def parse_runtime_env(text: str | None, working_dir: Path | None, pip: list[str] | None) -> dict[str, Any]:
    """The runtime environment of ``--runtime-env`` (JSON text or a .json/.toml file), ``--working-dir`` and
    ``--pip`` together (paths resolved here, on the driver)."""
    from spared.cluster.session import merge_runtime_env

    given: dict[str, Any] = {}
    if text:
        path = Path(text).expanduser()
        try:
            if path.suffix in (".json", ".toml"):
                if not path.is_file():
                    raise ValueError(f"--runtime-env file {path} does not exist")
                given = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
            else:
                given = json.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"--runtime-env must be JSON text or a .json/.toml file ({err})") from err
        if not isinstance(given, dict):
            raise ValueError(f"--runtime-env must hold a mapping (e.g. {{\"env_vars\": {{\"A\": \"1\"}}}}), got "
                             f"{type(given).__name__}")
    options: dict[str, Any] = {}
    if working_dir is not None:
        if not working_dir.is_dir():
            raise ValueError(f"--working-dir {working_dir} is not a folder")
        options["working_dir"] = str(working_dir.resolve())
    if pip:
        options["pip"] = list(pip)
    return merge_runtime_env(given, options)


def ray_settings(address: str | None, cpus: float, gpus: float, memory: str | None, resource: list[str] | None,
                 retries: int, timeout: float | None, runtime_env: str | None, working_dir: Path | None,
                 pip: list[str] | None, storage: str | None, node_cache: str | None, check: bool) -> Any:
    """The :class:`~spared.cluster.session.RaySettings` of the options, or the ``typer.Exit`` of a clear error."""
    from spared.cluster.session import RaySettings, TaskResources, require_ray

    try:
        require_ray()
        resources = TaskResources(cpus, gpus, parse_bytes(memory) if memory else None, parse_resources(resource))
        return RaySettings(address, resources, retries, timeout, parse_runtime_env(runtime_env, working_dir, pip),
                           storage, node_cache, check)
    except (ImportError, ValueError) as err:
        raise fail(str(err)) from err


#: The ``--executor`` values of ``spared bench`` and ``spared prepare``.
EXECUTORS = ("local", "ray")


def executor_settings(executor: str, *, address: str | None, cpus_per_run: float, gpus_per_run: float,
                      memory_per_run: str | None, resource: list[str] | None, retries: int, timeout: float | None,
                      runtime_env: str | None, working_dir: Path | None, pip: list[str] | None, storage: str | None,
                      node_cache: str | None, check_resources: bool, **more_ray_only: Any) -> Any:
    """Check ``--executor`` and the Ray executor's options: ``None`` for the local executor (which refuses any Ray
    option given, ``more_ray_only`` included: ``{flag: value}``), the :func:`ray_settings` for Ray."""
    if executor not in EXECUTORS:
        raise fail(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    reject_ray_options(executor, {
        "--address": address, "--cpus-per-run": cpus_per_run != 1.0, "--gpus-per-run": gpus_per_run,
        "--memory-per-run": memory_per_run, "--resource": resource, "--retries": retries, "--timeout": timeout,
        "--runtime-env": runtime_env, "--working-dir": working_dir, "--pip": pip, "--storage": storage,
        "--node-cache": node_cache, "--no-check-resources": not check_resources, **more_ray_only})
    if executor != "ray":
        return None
    return ray_settings(address, cpus_per_run, gpus_per_run, memory_per_run, resource, retries, timeout, runtime_env,
                        working_dir, pip, storage, node_cache, check_resources)


def reject_ray_options(executor: str, given: dict[str, Any]) -> None:
    """Fail when options of the Ray executor (``{flag: value or None}``) were given with another executor."""
    used = [flag for flag, value in given.items() if value]
    if executor != "ray" and used:
        raise fail(f"{', '.join(used)} only apply to --executor ray (this is --executor {executor})")
