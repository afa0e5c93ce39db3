"""Where runs execute: in this process one after the other, or as Ray tasks on a local instance or a cluster.

:func:`run_benchmark` is the driver: it skips finished runs (unless ``force``), hands the others to an executor,
and appends each run's row to the results table as soon as the run ends. A run that raises is recorded as
``failed`` with its error (the traceback goes to ``error.txt`` in its folder) and the other runs go on. Every
row records the ``node`` (host name) that ran it.

The Ray executor assumes that the machines share nothing but Ray. Paths are resolved on the driver, which builds
or reads each dataset once (in its own data cache); the processed ``.h5ad`` and its patch store, and the weight
files and folders the runs' settings name (:func:`path_settings`), travel to the nodes through Ray's object
store (or a storage location every node reads), are cached on each node by content hash, and are staged for the
run (:func:`spared.bench.train.staged_datasets`, :func:`spared.bench.train.staged_paths`). Each run trains in a
scratch folder on its node; its folder (config, metrics, predictions, checkpoint, logs) comes back into the
driver's ``out_dir/runs/``, so a rerun skips it and the report finds it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import socket
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from spared.bench.provenance import data_preset
from spared.bench.results import METRICS_FILE, RUNS, ResultsTable
from spared.bench.runs import RunSpec, canonical_dataset
from spared.cluster.session import require_ray


def execute(spec: RunSpec, out_dir: str | Path, data_dir: str | Path | None = None,
            progress: Any = False) -> dict[str, Any]:
    """Run ``spec`` with :func:`~spared.bench.train.run_one`; an exception becomes a ``failed`` row.

    ``progress``: ``True`` for Lightning's bar, or a callable receiving the run's progress events.
    """
    from spared.bench.train import run_one
    from spared.io.atomic import DiskFullError

    try:
        row = run_one(spec, out_dir, data_dir=data_dir, progress=progress)
    except DiskFullError:
        raise  # every later run would fail the same way: the benchmark stops with the one clear message
    except Exception as err:
        return failed_row(spec, out_dir, err, traceback.format_exc())
    return {**row, "data_version": spec.data_version, "spec_key": spec.spec_key, "preset": data_preset(spec.dataset),
            "node": socket.gethostname()}


def failed_row(spec: RunSpec, out_dir: str | Path, err: BaseException, trace: str = "",
               node: str | None = None) -> dict[str, Any]:
    """The results row of a run that raised ``err`` (its traceback is kept in ``runs/{run_id}/error.txt``);
    ``node``: the host that ran it (default: this one)."""
    run_dir = Path(out_dir) / RUNS / spec.run_id
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(trace or f"{type(err).__name__}: {err}\n")
    except OSError:
        pass  # no room or no permission for the traceback: the row still carries the error
    return {"run_id": spec.run_id, "model": spec.model, "dataset": canonical_dataset(spec.dataset),
            "target": spec.target, "seed": spec.seed, "status": "failed", "error": f"{type(err).__name__}: {err}",
            "custom": bool(spec.custom_model), "model_ref": spec.custom_model.get("ref", ""),
            "data_version": spec.data_version, "spec_key": spec.spec_key, "preset": data_preset(spec.dataset),
            "run_dir": str(run_dir.resolve()), "node": socket.gethostname() if node is None else node,
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


class Executor(Protocol):
    """Runs specs and yields their results rows as they finish (in any order)."""

    def map(self, specs: list[RunSpec], out_dir: Path, data_dir: Path | None = None) -> Iterator[dict[str, Any]]:
        ...


class LocalExecutor:
    """Runs one after the other in this process.

    Parameters
    ----------
    progress
        ``True``: Lightning's progress bar; a callable (e.g. :class:`~spared.bench.progress.ProgressBoard`):
        receives the progress events of :mod:`spared.bench.progress`.
    """

    def __init__(self, progress: Any = False) -> None:
        self.progress = progress

    def map(self, specs: list[RunSpec], out_dir: Path, data_dir: Path | None = None) -> Iterator[dict[str, Any]]:
        from spared.bench.progress import report

        report(self.progress, "submitted", count=len(specs))
        for spec in specs:
            report(self.progress, "started", run_id=spec.run_id, node=socket.gethostname(), pid=os.getpid(),
                   attempt=1)
            row = execute(spec, out_dir, data_dir, self.progress)
            report(self.progress, "finished", run_id=spec.run_id, status=row["status"])
            yield row


class RayExecutor:
    """Each run is a Ray task; the machines need to share nothing but Ray (see the module docstring).

    Parameters
    ----------
    address
        Cluster to join: ``"host:port"`` from a node of the cluster, ``"ray://host:10001"`` from anywhere (Ray
        Client), ``"auto"``; ``None`` starts a local instance unless Ray is already initialised in this process.
        A secured cluster needs its token in the environment (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN``).
    num_cpus_per_run, num_gpus_per_run, memory_per_run, resources
        What each run asks of a node (memory in bytes; custom resources by name). Ray runs as many at once as
        the nodes fit; a request no node can meet is an error before anything is submitted (unless
        ``check_resources=False``, for autoscaling clusters).
    max_retries
        Times a run is started again when its worker process or node died (a run that raises is recorded as
        failed, not retried).
    timeout
        Seconds one attempt of a run may take on its node; then it is stopped and recorded as failed.
    runtime_env
        Ray runtime environment of the runs (``working_dir``, ``pip``, ``env_vars``, ...).
    storage
        A path or URI every node can read (``s3://``, ``gs://``, a network mount, ...): datasets and run folders
        travel through it instead of the object store (for data too large for it).
    node_cache
        Cache folder on each node (default: ``$SPARED_NODE_CACHE`` there, else its temporary folder).
    progress
        A callable receiving progress events (:mod:`spared.bench.progress`), or ``True`` for a
        :class:`~spared.bench.progress.ProgressBoard` on stderr.
    init_kwargs
        More arguments of ``ray.init`` (e.g. ``num_cpus`` for a local instance).

    Custom models given as ``module:Class`` (or registered from a module) reach the workers through Ray's runtime
    environment: :func:`spared.models.registry.ray_runtime_env` adds their modules that are not installed
    packages to ``py_modules`` (joined with the ``runtime_env`` given); installed packages must be installed on
    every node.
    """

    def __init__(self, address: str | None = None, num_cpus_per_run: float = 1, num_gpus_per_run: float = 0,
                 max_retries: int = 0, *, memory_per_run: int | None = None,
                 resources: Mapping[str, float] | None = None, timeout: float | None = None,
                 runtime_env: Mapping[str, Any] | None = None, storage: str | None = None,
                 node_cache: str | None = None, check_resources: bool = True, progress: Any = False,
                 **init_kwargs: Any) -> None:
        from spared.cluster.session import RaySettings, TaskResources

        require_ray()
        self.settings = RaySettings(address, TaskResources(num_cpus_per_run, num_gpus_per_run, memory_per_run,
                                                           resources or {}),
                                    max_retries, timeout, runtime_env, storage, node_cache, check_resources,
                                    init_kwargs)
        self.progress = progress

    @classmethod
    def from_settings(cls, settings: Any, progress: Any = False) -> RayExecutor:
        """An executor with the given :class:`~spared.cluster.session.RaySettings`."""
        executor = cls(progress=progress)
        executor.settings = settings
        return executor

    def runtime_env(self, specs: list[RunSpec]) -> dict[str, Any]:
        """The runtime environment of the runs of ``specs``: the one given (anything the runs' models need shipped,
        such as their modules as ``py_modules``, joins it here through
        :func:`~spared.cluster.session.merge_runtime_env`)."""
        from spared.cluster.session import merge_runtime_env
        from spared.models.registry import ray_runtime_env

        refs = [spec.custom_model["ref"] for spec in specs if spec.custom_model]
        return merge_runtime_env(self.settings.runtime_env, ray_runtime_env(refs))

    def map(self, specs: list[RunSpec], out_dir: Path, data_dir: Path | None = None) -> Iterator[dict[str, Any]]:
        from spared.bench.progress import ProgressBoard
        from spared.bench.train import DATA_CACHE
        from spared.cluster.session import ray_session

        out_dir = Path(out_dir).resolve()
        cache = Path(data_dir).resolve() if data_dir is not None else out_dir / DATA_CACHE
        settings = dataclasses.replace(self.settings, runtime_env=self.runtime_env(specs))
        with ray_session(settings):
            if self.progress is True:
                with ProgressBoard() as board:
                    yield from _run_on_ray(specs, out_dir, cache, settings, board)
            else:
                yield from _run_on_ray(specs, out_dir, cache, settings, self.progress or None)


#: Setting names whose string values are paths (besides names ending in :data:`PATH_KEY_ENDINGS`).
PATH_KEYS = frozenset({"weights", "backbone_weights", "weights_dir", "checkpoint"})
PATH_KEY_ENDINGS = ("_path", "_file", "_dir", "_weights", "_checkpoint")
#: File name endings that mark a string value as a path whatever its setting's name.
PATH_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".pkl", ".npz", ".npy", ".h5"})


def path_settings(spec: RunSpec) -> set[str]:
    """The strings among the settings of ``spec`` (its model settings, nested ones included, and its
    ``backbone_weights`` and ``weights_dir``) that name a file or folder on this machine: the Ray executor ships
    each to the run's node. A string counts when its setting's name says it is a path (:data:`PATH_KEYS`,
    :data:`PATH_KEY_ENDINGS`), or when it holds a path separator or ends in a weights file suffix
    (:data:`PATH_SUFFIXES`), and it exists here (relative to this process's working folder); ``--weights-dir``
    always counts."""
    found: set[str] = set()

    def visit(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for name, item in value.items():
                visit(str(name), item)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(key, item)
        elif isinstance(value, str) and value not in ("none", "imagenet") and _names_a_path(key, value):
            found.add(value)

    visit("", spec.model_config)
    visit("backbone_weights", spec.training.backbone_weights)
    if spec.training.weights_dir is not None:  # always shipped: a folder missing here is an error before any run
        found.add(spec.training.weights_dir)
    return found


def _names_a_path(key: str, value: str) -> bool:
    path = Path(value).expanduser()
    looks = key in PATH_KEYS or key.endswith(PATH_KEY_ENDINGS) or "/" in value or path.suffix in PATH_SUFFIXES
    return looks and path.exists()


def _dataset_key(spec: RunSpec) -> tuple[str, int, float]:
    """What a run's staged dataset is keyed by: the dataset string and the patch geometry."""
    return spec.dataset, spec.training.patch_size, float(spec.training.patch_scale)


def _run_on_ray(specs: list[RunSpec], out_dir: Path, cache: Path, settings: Any,
                progress: Callable[[dict[str, Any]], None] | None) -> Iterator[dict[str, Any]]:
    """Ship the inputs, submit a task per run (SEPAL after its stage-1 run), install each result as it ends."""
    from spared.bench.progress import report
    from spared.bench.train import stage1_spec
    from spared.cluster.session import Job, NodeSettings, run_tasks
    from spared.cluster.transfer import Shipper, pack_dirs, ship_path

    report(progress, "submitted", count=len(specs))
    shipper = Shipper(settings.storage)
    node = NodeSettings.of(settings)
    with _scratch(out_dir / "ray-transfers") as scratch:
        shipped: dict[tuple[str, int, float], Any] = {}
        for spec in specs:
            key = _dataset_key(spec)
            if key not in shipped:
                try:
                    shipped[key] = _ship_dataset(spec, cache, shipper)
                except Exception as err:  # the dataset cannot be built or read: its runs fail, the others go on
                    shipped[key] = (err, traceback.format_exc())
        ids = {spec.run_id for spec in specs}
        named = {spec.run_id: path_settings(spec) for spec in specs}
        paths = {path: ship_path(path, shipper) for path in set().union(*named.values())}
        jobs: list[Job] = []
        for spec in specs:
            inputs = shipped[_dataset_key(spec)]
            if isinstance(inputs[0], BaseException):
                row = failed_row(spec, out_dir, *inputs)
                report(progress, "finished", run_id=spec.run_id, status="failed")
                yield row
                continue
            stage1, after, ready = stage1_spec(spec), None, []
            if stage1 is not None and stage1.run_id in ids:
                after = stage1.run_id
            elif stage1 is not None and (out_dir / RUNS / stage1.run_id / METRICS_FILE).is_file():
                archive = pack_dirs(out_dir / RUNS, [stage1.run_id], Path(scratch) / f"{stage1.run_id}.tar")
                ready.append(shipper.ship(archive))
            files = {path: paths[path] for path in named[spec.run_id]}
            jobs.append(Job(spec.run_id, (spec, spec.run_id, inputs, ready, files, node), after))
        jobs.sort(key=lambda job: job.after is not None)  # a stage-1 run is submitted before the runs needing it
        by_id = {spec.run_id: spec for spec in specs}
        for outcome in run_tasks(run_on_node, jobs, settings, progress):
            spec = by_id[outcome.key]
            if outcome.error is not None:
                trace = "".join(traceback.format_exception(outcome.error))
                row = failed_row(spec, out_dir, outcome.error, trace, node=outcome.node.get("node", ""))
            else:
                row = _install(outcome.value, spec, out_dir, Path(scratch))
            row = {**row, **{k: v for k, v in outcome.node.items() if k not in row}, "attempts": outcome.attempts}
            report(progress, "finished", run_id=spec.run_id, status=row["status"])
            yield row


@contextmanager
def _scratch(path: Path) -> Iterator[Path]:
    """A scratch folder beside ``path`` named after this process (those of dead processes, killed before they
    removed theirs, are removed first); removed on leaving."""
    from spared.io.atomic import remove_stale_temps, temp_sibling

    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    folder = temp_sibling(path)
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _ship_dataset(spec: RunSpec, cache: Path, shipper: Any) -> tuple[Any, Any]:
    """Build or read the dataset of ``spec`` on the driver and ship its ``.h5ad`` and patch store."""
    from spared.bench.runs import data_fingerprint
    from spared.bench.train import dataset_files

    files = dataset_files(spec.dataset, cache, spec.training.patch_size, spec.training.patch_scale)
    now = data_fingerprint(spec.dataset)
    if spec.data_version and now != spec.data_version:
        raise RuntimeError(f"{spec.dataset} changed after the runs were defined (data version {now}, runs made "
                           f"for {spec.data_version}); start the benchmark again")
    return shipper.ship(files.h5ad), shipper.ship(files.store.path)


def _install(result: dict[str, Any], spec: RunSpec, out_dir: Path, scratch: Path) -> dict[str, Any]:
    """Put the run folders a task sent back under ``out_dir/runs`` (its own run replaces any earlier folder;
    a stage-1 run it trained is added unless finished here already); the row then points at the copy."""
    from spared.cluster.transfer import archive_folders, receive, unpack_dir
    from spared.io.atomic import write_text

    archive = receive(result["archive"], scratch / f"{spec.run_id}.tar")
    for name in archive_folders(archive):
        dest = out_dir / RUNS / name
        if name == spec.run_id or not (dest / METRICS_FILE).is_file():
            unpack_dir(archive, name, dest)
    archive.unlink()
    run_dir = out_dir / RUNS / spec.run_id
    metrics = run_dir / METRICS_FILE
    if metrics.is_file():
        stored = json.loads(metrics.read_text())
        write_text(metrics, json.dumps({**stored, "run_dir": str(run_dir)}, indent=2, sort_keys=True))
    return {**result["row"], "dataset": canonical_dataset(spec.dataset), "run_dir": str(run_dir)}


def run_on_node(spec: RunSpec, run_id: str, dataset: tuple[Any, Any], ready: list[Any],
                files: Mapping[str, tuple[str, Any]], node: Any, prerequisite: dict[str, Any] | None,
                events: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The Ray task of one run: fetch its dataset into the node cache, train in a scratch folder, send back its
    run folder(s) and row.

    ``ready``: archives of finished runs it builds on (SEPAL's stage 1 finished earlier); ``files``: the files and
    folders its settings name (:func:`path_settings`, shipped by :func:`~spared.cluster.transfer.ship_path`),
    fetched on the node and staged for the run (:func:`spared.bench.train.staged_paths`); ``node``:
    :class:`~spared.cluster.session.NodeSettings`; ``prerequisite``: the result of the stage-1 task it waited for,
    or ``None``.
    """
    from spared.bench.train import staged_datasets, staged_paths
    from spared.cluster.session import start_on_node
    from spared.cluster.transfer import archive_folders, fetch, fetch_path, node_cache, pack_dirs, send_back, unpack_dir

    identity = start_on_node(node, events, run_id=run_id)
    cache = node_cache(node.node_cache)
    local = {path: str(fetch_path(shipped, cache)) for path, shipped in files.items()}
    if spec.training.weights_dir in local:  # an execution setting (not in the run id): recorded as the node's copy
        spec = dataclasses.replace(spec, training=dataclasses.replace(spec.training,
                                                                      weights_dir=local[spec.training.weights_dir]))
    if spec.run_id != run_id:
        raise RuntimeError(f"node {identity['node']} computes run id {spec.run_id} for the driver's {run_id} (the "
                           f"dataset path {spec.dataset} resolves differently there); give the dataset by a path "
                           f"without symbolic links")
    h5ad, patches = (fetch(ref, cache) for ref in dataset)
    with _scratch(cache / "work" / run_id) as work:
        runs = work / RUNS
        runs.mkdir()
        for ref in [*ready, *([prerequisite["archive"]] if prerequisite else [])]:
            archive = fetch(ref, cache)
            for name in archive_folders(archive):
                unpack_dir(archive, name, runs / name)
        before = {p.name for p in runs.iterdir()}
        with staged_datasets({_dataset_key(spec): (h5ad, patches)}), staged_paths(local):
            row = execute(spec, work, cache / "data", events)
        names = sorted({p.name for p in runs.iterdir()} - before | {run_id})
        back = send_back(pack_dirs(runs, names, work / "runs.tar"), node.storage)
        return {"row": {**row, **identity}, "archive": back}


def run_benchmark(specs: Iterable[RunSpec], out_dir: str | Path, executor: Executor | None = None,
                  force: bool = False, on_result: Callable[[dict[str, Any]], None] | None = None,
                  data_dir: str | Path | None = None) -> pd.DataFrame:
    """Run every spec not finished yet and record each one in ``out_dir``'s results table.

    Parameters
    ----------
    specs
        The runs (duplicates are run once).
    out_dir
        Benchmark folder (results table, ``runs/``, and by default the dataset cache ``_data``).
    executor
        :class:`LocalExecutor` (default) or :class:`RayExecutor`.
    force
        Run again runs that finished before.
    on_result
        Called with each row as its run ends (progress reporting).
    data_dir
        Dataset cache shared by the runs (default ``out_dir/_data``).

    Returns
    -------
    DataFrame
        The table rows of ``specs`` (finished earlier or now), in the order of ``specs``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    unique = list({spec.run_id: spec for spec in specs}.values())
    table = ResultsTable(out_dir)
    finished = set() if force else table.finished()
    todo = [spec for spec in unique if spec.run_id not in finished]
    data_dir = Path(data_dir) if data_dir is not None else None
    for row in (executor or LocalExecutor()).map(todo, out_dir, data_dir) if todo else ():
        table.append(row)
        if on_result is not None:
            on_result(row)
    rows = table.load().set_index("run_id")
    return rows.loc[[spec.run_id for spec in unique]].reset_index()
