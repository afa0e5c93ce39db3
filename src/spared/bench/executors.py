"""Where runs execute: in this process one after the other, or as Ray tasks on a local instance or a cluster.

:func:`run_benchmark` is the driver: it skips finished runs (unless ``force``), hands the others to an executor,
and appends each run's row to the results table as soon as the run ends. A run that raises is recorded as
``failed`` with its error (the traceback goes to ``error.txt`` in its folder) and the other runs go on.
"""

from __future__ import annotations

import datetime as dt
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from spared.bench.provenance import data_preset
from spared.bench.results import RUNS, ResultsTable
from spared.bench.runs import RunSpec, canonical_dataset


def execute(spec: RunSpec, out_dir: str | Path, data_dir: str | Path | None = None,
            progress: bool = False) -> dict[str, Any]:
    """Run ``spec`` with :func:`~spared.bench.train.run_one`; an exception becomes a ``failed`` row."""
    from spared.bench.train import run_one

    try:
        row = run_one(spec, out_dir, data_dir=data_dir, progress=progress)
    except Exception as err:
        return failed_row(spec, out_dir, err, traceback.format_exc())
    return {**row, "data_version": spec.data_version, "spec_key": spec.spec_key, "preset": data_preset(spec.dataset)}


def failed_row(spec: RunSpec, out_dir: str | Path, err: BaseException, trace: str = "") -> dict[str, Any]:
    """The results row of a run that raised ``err`` (its traceback is kept in ``runs/{run_id}/error.txt``)."""
    run_dir = Path(out_dir) / RUNS / spec.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").write_text(trace or f"{type(err).__name__}: {err}\n")
    return {"run_id": spec.run_id, "model": spec.model, "dataset": canonical_dataset(spec.dataset),
            "target": spec.target, "seed": spec.seed, "status": "failed", "error": f"{type(err).__name__}: {err}",
            "data_version": spec.data_version, "spec_key": spec.spec_key, "preset": data_preset(spec.dataset),
            "run_dir": str(run_dir.resolve()),
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
        Show Lightning's progress bar.
    """

    def __init__(self, progress: bool = False) -> None:
        self.progress = progress

    def map(self, specs: list[RunSpec], out_dir: Path, data_dir: Path | None = None) -> Iterator[dict[str, Any]]:
        for spec in specs:
            yield execute(spec, out_dir, data_dir, self.progress)


class RayExecutor:
    """Each run is a Ray task requesting ``num_cpus_per_run`` CPUs and ``num_gpus_per_run`` GPUs.

    Parameters
    ----------
    address
        Cluster to join (``"auto"``, ``"ray://host:10001"``, ...); ``None`` starts a local instance unless Ray
        is already initialised in this process. Run folders and the dataset cache are written by the workers
        under ``out_dir``, so on a multi-node cluster ``out_dir`` must be a shared filesystem.
    num_cpus_per_run, num_gpus_per_run
        Resources of each task (Ray schedules as many at once as the cluster fits).
    max_retries
        Ray retries of a task whose worker died (a run that raises is not retried: it is recorded as failed).
    init_kwargs
        Extra arguments of ``ray.init`` (e.g. ``num_cpus`` for a local instance, ``runtime_env``).
    """

    def __init__(self, address: str | None = None, num_cpus_per_run: float = 1, num_gpus_per_run: float = 0,
                 max_retries: int = 0, **init_kwargs: Any) -> None:
        require_ray()
        if num_cpus_per_run <= 0 or num_gpus_per_run < 0:
            raise ValueError(f"num_cpus_per_run must be > 0 and num_gpus_per_run >= 0, got {num_cpus_per_run} and "
                             f"{num_gpus_per_run}")
        self.address = address
        self.num_cpus_per_run = num_cpus_per_run
        self.num_gpus_per_run = num_gpus_per_run
        self.max_retries = max_retries
        self.init_kwargs = init_kwargs

    def _connect(self) -> bool:
        """Initialise Ray when needed; True when this call started it (and so must shut it down)."""
        import ray

        if ray.is_initialized():
            return False
        kwargs = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
        ray.init(address=self.address, **kwargs)
        return True

    def map(self, specs: list[RunSpec], out_dir: Path, data_dir: Path | None = None) -> Iterator[dict[str, Any]]:
        import ray

        started = self._connect()
        try:
            task = ray.remote(num_cpus=self.num_cpus_per_run, num_gpus=self.num_gpus_per_run,
                              max_retries=self.max_retries)(execute)
            cache = None if data_dir is None else str(data_dir)
            pending = {task.remote(spec, str(out_dir), cache): spec for spec in specs}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    spec = pending.pop(ref)
                    try:
                        yield ray.get(ref)
                    except Exception as err:  # the worker died or the task could not run
                        yield failed_row(spec, out_dir, err)
        finally:
            if started:
                ray.shutdown()


def require_ray() -> None:
    """Raise ``ImportError`` saying how to install Ray when it is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError as err:
        raise ImportError("the Ray executor needs Ray, which is not installed: pip install 'spared[ray]' (or run "
                          "with --executor local)") from err


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
    for row in (executor or LocalExecutor()).map(todo, out_dir, data_dir):
        table.append(row)
        if on_result is not None:
            on_result(row)
    rows = table.load().set_index("run_id")
    return rows.loc[[spec.run_id for spec in unique]].reset_index()
