"""Catalogue datasets prepared in parallel on a Ray cluster (``spared prepare NAME... --executor ray``).

Each dataset is one task. Its node downloads the raw files into its own cache (or reads them from ``source``: a
folder every node can read, or a storage URI copied to the node), processes them and cuts the patches, exactly
as :func:`spared.datasets.get` does on one machine; the processed ``.h5ad`` and patch store then come back to
the driver's data folder, at the paths :func:`spared.datasets.cache_paths` gives, where ``get`` finds them. A
dataset already cached there is not sent to the cluster (unless ``force``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spared.cluster.session import RaySettings


@dataclass
class Prepared:
    """One dataset's outcome: ``status`` is ``"cached"`` (found on the driver), ``"built"`` or ``"failed"``."""

    name: str
    status: str
    h5ad: Path
    patches: Path | None
    error: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    node: str = ""


def prepare_on_ray(requests: Sequence[tuple[str, Any]], settings: RaySettings, data_dir: str | Path | None = None,
                   force: bool = False, patches: bool = True, source: str | None = None,
                   progress: Callable[[dict[str, Any]], None] | None = None) -> Iterator[Prepared]:
    """Prepare ``(name, ProcessingConfig)`` requests on the cluster; yield each outcome as it ends.

    Parameters
    ----------
    requests
        Catalogue keys with their processing settings.
    settings
        Cluster, resources per dataset, retries, time limit, runtime environment (:class:`RaySettings`).
    data_dir
        The driver's data root the caches are written into (default ``$SPARED_DATA``).
    force, patches
        As in :func:`spared.datasets.get`.
    source
        Raw files' folder (every node reads it) or storage URI, instead of the catalogue's download URLs.
    progress
        Receives ``submitted``, ``started`` (``dataset``, ``node``, ``pid``, ``attempt``) and ``finished`` events.
    """
    import ray

    from spared.cluster.session import Job, NodeSettings, check_resources, connect, run_tasks
    from spared.cluster.transfer import receive
    from spared.datasets import cache_paths

    send = progress or (lambda event: None)
    send({"event": "submitted", "count": len(requests)})
    targets = {name: cache_paths(name, config, data_dir) for name, config in requests}
    jobs = []
    for name, config in requests:
        h5ad, patch_file = targets[name]
        if not force and h5ad.is_file() and (not patches or patch_file.is_file()):
            send({"event": "finished", "dataset": name, "status": "cached"})
            yield Prepared(name, "cached", h5ad, patch_file if patch_file.is_file() else None)
        else:
            jobs.append(Job(name, (name, config, force, patches, source, NodeSettings.of(settings))))
    if not jobs:
        return
    started = connect(settings)
    try:
        if settings.check_resources:
            check_resources(settings.resources)
        for outcome in run_tasks(prepare_on_node, jobs, settings, progress):
            h5ad, patch_file = targets[outcome.key]
            node = outcome.node.get("node", "")
            if outcome.error is not None:
                done = Prepared(outcome.key, "failed", h5ad, None, f"{type(outcome.error).__name__}: {outcome.error}",
                                attempts=outcome.attempts, node=node)
            else:
                result = outcome.value
                if result["patches"] is not None:
                    receive(result["patches"], patch_file)
                receive(result["h5ad"], h5ad)  # last: a cache entry is complete once its .h5ad exists
                done = Prepared(outcome.key, "built", h5ad, patch_file if result["patches"] is not None else None,
                                summary=result["summary"], attempts=outcome.attempts, node=node)
            send({"event": "finished", "dataset": outcome.key, "status": done.status})
            yield done
    finally:
        if started:
            ray.shutdown()


def prepare_on_node(name: str, config: Any, force: bool, patches: bool, source: str | None, node: Any,
                    prerequisite: Any, events: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The Ray task of one dataset: :func:`spared.datasets.get` into the node's cache, then send the files back.

    ``node``: :class:`~spared.cluster.session.NodeSettings` (``prerequisite`` is unused: datasets are independent).
    """
    from spared.cluster.session import start_on_node
    from spared.cluster.transfer import fetch_folder, node_cache, send_back
    from spared.datasets import cache_paths, get

    identity = start_on_node(node, events, dataset=name)
    cache = node_cache(node.node_cache)
    local = fetch_folder(source, cache) if source else None
    adata = get(name, config=config, data_dir=cache / "data", force=force, patches=patches, progress=False,
                source=local)
    h5ad, patch_file = cache_paths(name, config, cache / "data")
    info = adata.uns.get("spared", {})
    summary = {"n_obs": int(adata.n_obs), "n_vars": int(adata.n_vars),
               "slides": int(adata.obs["slide_id"].nunique()),
               "warnings": [str(w) for w in info.get("warnings", [])], **identity}
    back = send_back(patch_file, node.storage) if patches and patch_file.is_file() else None
    return {"h5ad": send_back(h5ad, node.storage), "patches": back, "summary": summary}
