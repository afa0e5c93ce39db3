"""``spared prepare NAME``: download → read → process → patches → cache, for a catalogue dataset."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

from spared.cli.app import app, console, writable_dir
from spared.cli.datasets import FromOption
from spared.cli.processing import PRESET_HELP, fail, load_config


@app.command()
def prepare(
    name: Annotated[str, typer.Argument(help="Dataset key (see `spared datasets`).")],
    config_file: Annotated[Path | None, typer.Option("--config", help="TOML/JSON parameter file.")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Override a parameter: key=value.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Cache root (default: $SPARED_DATA).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a cached result exists.")] = False,
    patches: Annotated[bool, typer.Option("--patches/--no-patches", help="Cut image patches.")] = True,
    source: FromOption = None,
    preset: Annotated[str | None, typer.Option(help=PRESET_HELP, show_default=False)] = None,
) -> None:
    """Build (or load from cache) the processed collection NAME and print where it lies."""
    prepare_dataset(name, config_file, overrides, data_dir, force, patches, source, preset)


def prepare_dataset(name: str, config_file: Path | None = None, overrides: list[str] | None = None,
                    data_dir: Path | None = None, force: bool = False, patches: bool = True,
                    source: Path | None = None, preset: str | None = None) -> None:
    """The work of ``spared prepare`` (also ``spared process NAME``)."""
    from spared.catalog import load_spec
    from spared.datasets import cache_paths, get
    from spared.io.readers import ReaderError

    try:
        spec = load_spec(name)
        base = spec.processing_config(None)
    except (LookupError, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc
    cfg = load_config(config_file, overrides, base=base, preset=preset)
    h5ad, patch_file = cache_paths(name, cfg, data_dir)
    cached = h5ad.is_file() and not force
    if not cached:
        writable_dir(h5ad.parent)  # a read-only cache is fine to load from, not to build into
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            adata = get(name, config=cfg, data_dir=data_dir, force=force, patches=patches, source=source)
    except (ReaderError, LookupError, ValueError, OSError) as exc:
        raise fail(f"{type(exc).__name__}: {exc}") from exc
    recorded = [str(m) for m in adata.uns.get("spared", {}).get("warnings", [])]
    others = dict.fromkeys(str(w.message) for w in caught if str(w.message) not in recorded)
    slides = adata.obs["slide_id"].nunique()
    console.print(f"{'loaded' if cached else 'built'} {name}: {adata.n_obs} spots × {adata.n_vars} genes, "
                  f"{slides} slide(s), preset {cfg.preset_name!r}")
    console.print(f"  h5ad:    {h5ad}")
    if patches and "patches" in adata.uns.get("spared", {}):
        console.print(f"  patches: {patch_file}")
    for message in [*recorded, *others]:
        console.print("  [bold yellow]warning:[/]", end=" ")
        console.print(str(message), markup=False, highlight=False, soft_wrap=True)
