"""Catalogue datasets prepared in parallel on a Ray cluster (``spared prepare NAME... --executor ray``).

Each dataset is one task. Its node downloads the raw files into its own cache (or reads them from ``source``: a
folder every node can read, or a storage URI copied to the node), processes them and cuts the patches, exactly
as :func:`spared.datasets.prepare` does on one machine. The cache is keyed on the raw files the *node* read, so
it comes back to the driver's data folder under the node's names: the ``.h5ad``, its patch store beside it (the
name the ``.h5ad`` records) and the record of its key material. There ``get`` finds it: by its key where the
driver holds the same raw files, and, where the driver holds none, as the cache that stands for them (see
:func:`spared.datasets.prepare`); where the driver's raw files differ, the outcome says how
(:func:`spared.datasets.key_differences`). A dataset already cached on the driver is not sent to the cluster
(unless ``force``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spared.cluster.session import RaySettings


@dataclass
class Prepared:
    """One dataset's outcome: ``status`` is ``"cached"`` (found on the driver), ``"built"`` or ``"failed"``;
    ``note``: why the driver's own raw files would not find a cache built on a node (empty when they do)."""

    name: str
    status: str
    h5ad: Path
    patches: Path | None
    error: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    node: str = ""
    note: str = ""


def prepare_on_ray(requests: Sequence[tuple[str, Any]], settings: RaySettings, data_dir: str | Path | None = None,
                   force: bool = False, patches: bool = True, source: str | None = None,
                   progress: Callable[[dict[str, Any]], None] | None = None,
                   allow_external_links: bool = False) -> Iterator[Prepared]:
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
    allow_external_links
        Follow links inside ``source`` that lead out of it (refused otherwise), as in :func:`spared.datasets.get`.
    """
    import ray  # noqa: F401 (Ray is needed even when every dataset is cached)

    from spared.bench.progress import report
    from spared.cluster.session import Job, NodeSettings, ray_session, run_tasks
    from spared.datasets import cache_paths, key_differences

    report(progress, "submitted", count=len(requests))
    configs = dict(requests)
    targets = {name: cache_paths(name, config, data_dir) for name, config in configs.items()}
    jobs = []
    for name, config in requests:
        h5ad, patch_file = targets[name]
        if not force and h5ad.is_file() and (not patches or patch_file.is_file()):
            report(progress, "finished", dataset=name, status="cached")
            yield Prepared(name, "cached", h5ad, patch_file if patch_file.is_file() else None)
        else:
            jobs.append(Job(name, (name, config, force, patches, source, allow_external_links,
                                   NodeSettings.of(settings))))
    if not jobs:
        return
    with ray_session(settings):
        for outcome in run_tasks(prepare_on_node, jobs, settings, progress):
            h5ad = targets[outcome.key][0]
            node = outcome.node.get("node", "")
            if outcome.error is not None:
                done = Prepared(outcome.key, "failed", h5ad, None, f"{type(outcome.error).__name__}: {outcome.error}",
                                attempts=outcome.attempts, node=node)
            else:
                result = outcome.value
                h5ad, patch_file = install(result, h5ad.parent)
                differences = key_differences(outcome.key, configs[outcome.key], data_dir, h5ad)
                note = (f"the raw files of {outcome.key} in this data folder are not those node {node or '?'} read, "
                        f"so `spared prepare {outcome.key}` here would not use this cache but build anew "
                        f"({'; '.join(differences)}); to use it here, remove those raw files or link the ones the "
                        f"node read (`spared download {outcome.key} --from FOLDER`)" if differences else "")
                done = Prepared(outcome.key, "built", h5ad, patch_file, summary=result["summary"],
                                attempts=outcome.attempts, node=node, note=note)
            report(progress, "finished", dataset=outcome.key, status=done.status)
            yield done


def install(result: dict[str, Any], folder: Path) -> tuple[Path, Path | None]:
    """Driver side: put the cache a node sent back (:func:`prepare_on_node`) into ``folder``, the dataset's
    processed folder on the driver, under the node's names: the patch store beside the ``.h5ad`` as the ``.h5ad``
    records it, the record of its key material, then the ``.h5ad`` (a cache is complete once it exists).
    Returns ``(h5ad, patch store or None)``."""
    from spared.cluster.transfer import receive
    from spared.datasets import inputs_file
    from spared.io.atomic import write_text
    from spared.io.patch_paths import store_file

    h5ad = Path(folder) / result["h5ad"].name
    patch_file = receive(result["patches"], store_file(h5ad)) if result["patches"] is not None else None
    if result["inputs"] is not None:
        write_text(inputs_file(h5ad), json.dumps(result["inputs"], indent=1))
    receive(result["h5ad"], h5ad)
    return h5ad, patch_file


def prepare_on_node(name: str, config: Any, force: bool, patches: bool, source: str | None,
                    allow_external_links: bool, node: Any, prerequisite: Any,
                    events: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The Ray task of one dataset: :func:`spared.datasets.prepare` into the node's cache, then send back the
    files (the ``.h5ad`` and patch store) and the key material recorded beside them (``inputs``).

    ``node``: :class:`~spared.cluster.session.NodeSettings` (``prerequisite`` is unused: datasets are independent).
    """
    from spared.cluster.session import start_on_node
    from spared.cluster.transfer import fetch_folder, node_cache, send_back
    from spared.datasets import inputs_file, prepare

    identity = start_on_node(node, events, dataset=name)
    cache = node_cache(node.node_cache)
    local = fetch_folder(source, cache) if source else None
    done = prepare(name, config=config, data_dir=cache / "data", force=force, patches=patches, progress=False,
                   source=local, allow_external_links=allow_external_links)
    adata, record = done.adata, inputs_file(done.h5ad)
    info = adata.uns.get("spared", {})
    summary = {"n_obs": int(adata.n_obs), "n_vars": int(adata.n_vars),
               "slides": int(adata.obs["slide_id"].nunique()),
               "warnings": [str(w) for w in info.get("warnings", [])], **identity}
    back = send_back(done.patches, node.storage) if patches and done.patches.is_file() else None
    return {"h5ad": send_back(done.h5ad, node.storage), "patches": back, "summary": summary,
            "inputs": json.loads(record.read_text()) if record.is_file() else None}
