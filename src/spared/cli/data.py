"""``spared prepare NAME...``: download → read → process → patches → cache, for catalogue datasets, in this process
or in parallel on a Ray cluster (``--executor ray``)."""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from spared.cli.app import app, console, writable_dir
from spared.cli.cluster import (
    AddressOption,
    CheckOption,
    CpusOption,
    GpusOption,
    MemoryOption,
    NodeCacheOption,
    PipOption,
    ResourceOption,
    RetriesOption,
    RuntimeEnvOption,
    StorageOption,
    TimeoutOption,
    WorkingDirOption,
    executor_settings,
)
from spared.cli.datasets import ExternalLinksOption, FromOption
from spared.cli.processing import PRESET_HELP, fail, load_config


@app.command()
def prepare(
    names: Annotated[list[str], typer.Argument(help="Dataset keys (see `spared datasets`).")],
    config_file: Annotated[Path | None, typer.Option("--config", help="TOML/JSON parameter file.")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a parameter: key=value.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Cache root (default: $SPARED_DATA).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a cached result exists.")] = False,
    patches: Annotated[bool, typer.Option("--patches/--no-patches", help="Cut image patches.")] = True,
    source: FromOption = None,
    allow_external_links: ExternalLinksOption = False,
    preset: Annotated[str | None, typer.Option(help=PRESET_HELP, show_default=False)] = None,
    executor: Annotated[str, typer.Option(help="local (one dataset after the other, here) or ray (in parallel on a "
                                                "Ray cluster; caches come back to --data-dir; --from must then be "
                                                "a folder every node reads, or a storage URI).")] = "local",
    progress: Annotated[bool, typer.Option("--progress", help="With --executor ray: a bar per dataset being "
                                                             "prepared (and its node).")] = False,
    address: AddressOption = None,
    cpus_per_run: CpusOption = 1.0,
    gpus_per_run: GpusOption = 0.0,
    memory_per_run: MemoryOption = None,
    resource: ResourceOption = None,
    retries: RetriesOption = 0,
    timeout: TimeoutOption = None,
    runtime_env: RuntimeEnvOption = None,
    working_dir: WorkingDirOption = None,
    pip: PipOption = None,
    storage: StorageOption = None,
    node_cache: NodeCacheOption = None,
    check_resources: CheckOption = True,
) -> None:
    """Build (or load from cache) the processed collections NAME... and print where they lie.

    A cache is keyed on the raw files' content, every setting and the protocol: a changed input builds a new
    cache, and what changed is printed.
    """
    settings = executor_settings(
        executor, address=address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, memory_per_run=memory_per_run,
        resource=resource, retries=retries, timeout=timeout, runtime_env=runtime_env, working_dir=working_dir, pip=pip,
        storage=storage, node_cache=node_cache, check_resources=check_resources, **{"--progress": progress})
    if settings is None:
        for name in names:
            prepare_dataset(name, config_file, overrides, data_dir, force, patches, source, allow_external_links,
                            preset)
        return
    prepare_datasets_on_ray(names, settings, config_file, overrides, data_dir, force, patches, source, progress,
                            allow_external_links, preset)


def _config(name: str, config_file: Path | None, overrides: list[str] | None, preset: str | None = None) -> Any:
    """The processing settings of catalogue dataset ``name``: its own, then the file, the preset, then the
    overrides (an organism other than the catalogue's is refused)."""
    from spared.catalog import load_spec
    from spared.datasets import check_organism

    try:
        spec = load_spec(name)
        base = spec.processing_config(None)
    except (LookupError, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
    cfg = load_config(config_file, overrides, base=base, preset=preset)
    try:
        check_organism(spec, cfg)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    return cfg


def prepare_dataset(name: str, config_file: Path | None = None, overrides: list[str] | None = None,
                    data_dir: Path | None = None, force: bool = False, patches: bool = True,
                    source: Path | None = None, allow_external_links: bool = False,
                    preset: str | None = None) -> None:
    """The work of ``spared prepare`` for one dataset in this process (also ``spared process NAME``)."""
    from spared.datasets import prepare
    from spared.io.readers import ReaderError

    cfg = _config(name, config_file, overrides, preset)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            done = prepare(name, config=cfg, data_dir=data_dir, force=force, patches=patches, source=source,
                           allow_external_links=allow_external_links)
    except (ReaderError, LookupError, ValueError, OSError) as exc:
        raise fail(str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}") from exc
    summary = _summary(done.adata, [str(w.message) for w in caught])
    shown = done.patches if patches and "patches" in done.adata.uns.get("spared", {}) else None
    print_prepared(name, "built" if done.built else "loaded", done.h5ad, shown, summary, done.changes)


def prepare_datasets_on_ray(names: list[str], settings: Any, config_file: Path | None, overrides: list[str] | None,
                            data_dir: Path | None, force: bool, patches: bool, source: Path | str | None,
                            progress: bool, allow_external_links: bool = False, preset: str | None = None) -> None:
    """``spared prepare NAME... --executor ray``: every dataset a task on the cluster, caches written here."""
    import anndata as ad

    from spared.bench.progress import ProgressBoard
    from spared.catalog import load_spec
    from spared.cluster.prepare import prepare_on_ray
    from spared.cluster.session import ClusterError
    from spared.io.download import processed_dir

    requests = [(name, _config(name, config_file, overrides, preset)) for name in dict.fromkeys(names)]
    for name, _ in requests:  # the folder of the caches (cache_paths' parent), without computing their keys
        writable_dir(processed_dir(load_spec(name), data_dir))
    where = str(source) if source is not None and "://" in str(source) else (
        str(Path(source).resolve()) if source is not None else None)
    board = ProgressBoard(console, label="datasets") if progress else None
    failed = []
    try:
        with board or nullcontext():
            for done in prepare_on_ray(requests, settings, data_dir, force, patches, where, board,
                                       allow_external_links):
                if done.status == "failed":
                    failed.append(done.name)
                    console.print(f"[red]failed[/] {done.name} on {done.node or 'no node'}: {done.error}",
                                  highlight=False)
                    continue
                summary = done.summary
                if done.status == "cached":
                    adata = ad.read_h5ad(done.h5ad, backed="r")
                    summary = _summary(adata)
                    adata.file.close()
                label = "loaded" if done.status == "cached" else f"built on {summary.get('node', '?')}:"
                print_prepared(done.name, label, done.h5ad, done.patches, summary)
                if done.note:
                    console.print("  [bold yellow]note:[/]", end=" ")
                    console.print(done.note, markup=False, highlight=False, soft_wrap=True)
    except ClusterError as exc:
        raise fail(str(exc)) from exc
    if failed:
        raise fail(f"{len(failed)} of {len(requests)} datasets failed: {', '.join(failed)}")


def _summary(adata: Any, caught: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Size of a prepared collection and its warnings: those recorded in it, then others ``caught`` meanwhile."""
    recorded = [str(m) for m in adata.uns.get("spared", {}).get("warnings", [])]
    return {"n_obs": adata.n_obs, "n_vars": adata.n_vars, "slides": adata.obs["slide_id"].nunique(),
            "preset": adata.uns.get("spared", {}).get("preset"),
            "warnings": [*recorded, *dict.fromkeys(m for m in caught if m not in recorded)]}


def print_prepared(name: str, label: str, h5ad: Path, patches: Path | None, summary: dict[str, Any],
                   changes: list[str] | tuple[str, ...] = ()) -> None:
    """The lines ``spared prepare`` prints for a dataset: its size, what changed since the latest cache, its files
    and warnings."""
    preset = f", preset {summary['preset']!r}" if summary.get("preset") else ""
    console.print(f"{label} {name}: {summary['n_obs']} spots × {summary['n_vars']} genes, {summary['slides']} "
                  f"slide(s){preset}")
    for change in changes:
        console.print(f"  new cache: {change}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"  h5ad:    {h5ad}")
    if patches is not None:
        console.print(f"  patches: {patches}")
    for message in summary.get("warnings", []):
        console.print("  [bold yellow]warning:[/]", end=" ")
        console.print(str(message), markup=False, highlight=False, soft_wrap=True)
