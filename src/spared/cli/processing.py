"""``spared simulate``, ``spared process`` and ``spared demo``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from spared.cli.app import app, console, fail, writable_dir, writable_file
from spared.io.atomic import write_h5ad


def read_h5ad(path: Path):
    """Read an h5ad file (its patch store found beside it) with a clear error when it is missing or not an h5ad."""
    from spared.io.patch_paths import read_h5ad as read_with_store

    if not path.is_file():
        raise fail(f"{path} does not exist")
    try:
        adata = read_with_store(path)
    except Exception as exc:  # h5py/anndata raise many types for a broken file
        raise fail(f"could not read {path} as h5ad ({type(exc).__name__}: {exc})") from exc
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise fail(f"{path} holds no {'spots' if adata.n_obs == 0 else 'genes'} ({adata.n_obs} × {adata.n_vars}); "
                   f"nothing to work on")
    return adata


#: ``--preset`` of ``spared process`` and ``spared prepare``.
PRESET_HELP = ("Processing preset: 'spared' (this package's layers) or 'original' (the original SpaRED library's "
               "layers: its directed spatial graphs for the median filter and Moran's I). --set values win.")


def load_config(config_file: Path | None, overrides: list[str] | None, base=None, preset: str | None = None):
    """A ProcessingConfig from defaults (or ``base``), an optional TOML/JSON file over them, a preset, and
    key=value overrides (applied in that order)."""
    from spared.config import ProcessingConfig

    try:
        cfg = ProcessingConfig.from_file(config_file, base) if config_file else (base or ProcessingConfig())
        return cfg.with_overrides([*([f"preset={preset}"] if preset else []), *(overrides or [])])
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from exc


@app.command()
def simulate(
    out: Annotated[Path, typer.Argument(help="Output .h5ad path.")],
    slides: Annotated[int, typer.Option(help="Number of slides.")] = 4,
    spots: Annotated[int, typer.Option(help="Spots per slide (approximate).")] = 1000,
    genes: Annotated[int, typer.Option(help="Number of genes.")] = 256,
    dropout: Annotated[float, typer.Option(help="Dropout strength in [0, 1).")] = 0.5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    organism: Annotated[str, typer.Option(help="human or mouse.")] = "human",
) -> None:
    """Simulate a Visium collection with known true expression and write it as h5ad."""
    from spared.synthetic import make_collection

    writable_file(out)
    try:
        adata = make_collection(n_slides=slides, n_spots=spots, n_genes=genes, dropout=dropout, seed=seed,
                                organism=organism)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    write_h5ad(adata, out)
    console.print(f"wrote {adata.n_obs} spots × {adata.n_vars} genes over {slides} slides to {out}")


@app.command()
def process(
    input: Annotated[str, typer.Argument(help="Raw collection (.h5ad) following docs/data_model.md, or a "
                                              "catalogue dataset name (see `spared datasets`).")],
    out: Annotated[Path | None, typer.Argument(help="Output processed .h5ad path (files only).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML/JSON file of parameters.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a parameter: key=value.")] = None,
    allow_non_integer: Annotated[bool, typer.Option(
        "--allow-non-integer", help="Process an X that is not integer counts (normalised or log values) anyway, "
                                    "with a warning recorded in the output.")] = False,
    patches: Annotated[bool, typer.Option(
        "--patches/--no-patches", help="Cut image patches beside OUT (OUT stem + .patches.h5) when the input "
                                       "carries a slide image.")] = True,
    preset: Annotated[str | None, typer.Option(help=PRESET_HELP, show_default=False)] = None,
) -> None:
    """Run the SpaRED processing protocol on a raw collection file, or on a catalogue dataset by name.

    ``spared process IN.h5ad OUT.h5ad`` processes a file (SpaCKLE completion included, one slide or one sample
    too) and cuts its patches when it has an image; ``spared process NAME`` is ``spared prepare NAME``
    (download → read → process → patches → cache).
    """
    from spared.data_model import ValidationError
    from spared.pp import process as run_protocol

    if out is None:
        if input.endswith(".h5ad") or Path(input).exists():
            raise fail(f"{input} looks like a file: give the output path too (spared process {input} OUT.h5ad)")
        from spared.cli.data import prepare_dataset

        prepare_dataset(input, config, set_, patches=patches, preset=preset)
        return
    writable_file(out)
    cfg = load_config(config, set_, preset=preset)
    adata = read_h5ad(Path(input))
    try:
        run_protocol(adata, cfg, progress=True, allow_non_integer=allow_non_integer)
    except (ValidationError, ValueError, KeyError) as exc:
        raise fail(str(exc).strip("'\"")) from exc
    store = _cut_patches(adata, out, cfg) if patches else None
    write_h5ad(adata, out)
    print_summary(adata)
    console.print(f"wrote {out}" + (f" and its patches {store}" if store else ""))


def _cut_patches(adata, out: Path, cfg) -> Path | None:
    """Cut the patches of a processed collection beside ``out`` when its slides carry an image; the store, or
    ``None`` (no image at all: nothing to cut; an image missing for some slides: recorded as a warning)."""
    from spared.datasets import add_patches
    from spared.io.patch_paths import store_file
    from spared.io.patches import image_source
    from spared.io.readers.common import ReaderError

    if not any(image_source(dict(entry)) for entry in dict(adata.uns.get("spatial", {})).values()):
        console.print("no slide image in the input: no patches cut")
        return None
    store = store_file(out)
    try:
        return store if add_patches(adata, store, cfg.patch_size, cfg.patch_scale, cfg.slide_key) else None
    except (ReaderError, OSError) as exc:
        raise fail(f"cutting the patches into {store} failed: {exc}; rerun with --no-patches to skip them") from exc


def print_summary(adata) -> None:
    """Print the per-step table and the headline figures of a processed collection."""
    import numpy as np
    from rich.table import Table

    from spared.pp import step_table

    steps = step_table(adata)
    table = Table(title="processing steps")
    for col in ("step", "seconds", "spots", "genes"):
        table.add_column(col, justify="left" if col == "step" else "right")
    for row in steps.itertuples():
        table.add_row(row.step, f"{row.seconds:.2f}", str(row.n_spots), str(row.n_genes))
    console.print(table)
    info = adata.uns["spared"]
    moran = adata.var["d_log1p_moran"].to_numpy()
    summary = Table(title="summary", show_header=False)
    summary.add_row("preset", str(info.get("preset", "n/a")))
    summary.add_row("spots", str(adata.n_obs))
    summary.add_row("genes kept", str(adata.n_vars))
    summary.add_row("missing, raw (all genes)", f"{info['raw_zero_fraction']:.1%}")
    summary.add_row("missing, kept genes", f"{1 - adata.layers['mask'].mean():.1%}")
    summary.add_row("missing after median filter", f"{info['missing_fraction_after_median']:.1%}")
    summary.add_row("Moran's I of kept genes (min/median/max)",
                    f"{np.nanmin(moran):.3f} / {np.nanmedian(moran):.3f} / {np.nanmax(moran):.3f}")
    console.print(summary)


#: Small versions of two fast models for the demo's benchmark: a two-block DenseNet for ST-Net, a one-layer ViT on
#: 32-px patches for ViT-B+Δ (each ~7-25 s per run on 2 cores; full-size ShuffleNet does not beat the train mean in
#: the demo's 150 steps).
DEMO_MODELS = {"stnet": {"backbone_kwargs": {"growth_rate": 8, "block_config": [2, 2], "num_init_features": 16}},
               "vit_b_delta": {"backbone_kwargs": {"image_size": 32, "patch_size": 8, "num_layers": 1, "num_heads": 2,
                                                   "hidden_dim": 64, "mlp_dim": 128}}}


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's files (data, runs, report).")] = Path("demo_output"),
    slides: Annotated[int, typer.Option(help="Simulated slides.")] = 3,
    spots: Annotated[int, typer.Option(help="Spots per slide.")] = 1200,
    genes: Annotated[int, typer.Option(help="Simulated genes.")] = 512,
    spackle_steps: Annotated[int, typer.Option(help="SpaCKLE training steps.")] = 200,
    bench_steps: Annotated[int, typer.Option(help="Training steps per benchmark run (0 skips the benchmark).")] = 150,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """The main job end to end on a simulated Visium collection with known truth.

    simulate → process (SpaRED protocol + SpaCKLE completion) → completion evaluation (SpaCKLE vs the adaptive
    median filter and baselines) → a small benchmark (two fast models, raw vs completed targets) → HTML report.
    """
    import pandas as pd

    from spared.config import ProcessingConfig
    from spared.impute.evaluate import evaluate, evaluate_fractions
    from spared.impute.spackle import SpackleConfig
    from spared.pp import process as run_protocol
    from spared.report import build_report
    from spared.synthetic import make_collection

    writable_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    console.rule("1. simulate")
    raw = make_collection(n_slides=slides, n_spots=spots, n_genes=genes, seed=seed)
    console.print(f"{raw.n_obs} spots × {raw.n_vars} genes, {slides} slides (true expression known)")

    console.rule("2. process: SpaRED protocol + SpaCKLE completion")
    cfg = ProcessingConfig(top_moran_genes=64, spackle_max_steps=spackle_steps, seed=seed)
    processed = run_protocol(raw, cfg, progress=True, dataset="simulated", copy=True)
    print_summary(processed)
    data_path = write_h5ad(processed, out / "simulated.h5ad")

    console.rule("3. completion: hide 10% of real val/test values, complete them")
    methods = ("spackle", "median", "mean", "knn")
    spackle_config = SpackleConfig(max_steps=spackle_steps, seed=seed)
    table = evaluate(processed, methods=methods, mask_fraction=0.1, seed=seed, truth_layer="c_true_log1p",
                     spackle_config=spackle_config)
    table.to_csv(out / "completion.csv", index=False)
    print_completion(table)
    console.print("completion error as more values are hidden (5%, 20%, 40%)…")
    curve = evaluate_fractions(processed, (0.05, 0.2, 0.4), methods, seed, spackle_config=spackle_config)
    pd.concat([table.assign(mask_fraction=0.1), curve], ignore_index=True).to_csv(out / "completion_curve.csv",
                                                                                 index=False)

    if bench_steps > 0:
        console.rule("4. benchmark: two fast models, raw vs SpaCKLE-completed targets")
        from spared.bench.executors import run_benchmark
        from spared.bench.runs import TrainingConfig, make_specs
        from spared.cli.bench import print_results

        training = TrainingConfig(max_steps=bench_steps, batch_size=32, patch_size=32, val_every=25, lr=1e-2,
                                  backbone_weights="none")  # random init: the demo runs offline
        specs = make_specs(list(DEMO_MODELS), [str(data_path.resolve())], ("raw", "completed"), (seed,),
                           model_config=DEMO_MODELS, training=training)
        runs = run_benchmark(specs, out)
        print_results(out, table=runs)
        failed = runs[runs["status"] == "failed"]

    console.rule("5. report")
    report = build_report(out)
    console.print(f"report: {report}\ntotal {time.perf_counter() - start:.0f} s")
    if bench_steps > 0 and len(failed):
        raise fail(f"{len(failed)} of {len(runs)} benchmark runs failed: {'; '.join(failed['error'])}")


def print_completion(table) -> None:
    """Print the completion evaluation and SpaCKLE's MSE reduction versus the median filter and the k-NN mean."""
    from rich.table import Table

    metrics = ["MSE", "MAE", "PCC-Gene", "PCC-Patch"]
    view = Table(title="completion of hidden values (lower MSE is better)")
    for col in ["method", "target", "entries", *metrics, "seconds"]:
        view.add_column(col, justify="left" if col in ("method", "target") else "right")
    for record in table.to_dict("records"):
        view.add_row(record["method"], record["target"], str(record["n_entries"]),
                     *[f"{record.get(m, float('nan')):.3f}" for m in metrics], f"{record['seconds']:.1f}")
    console.print(view)
    masked = table[table["target"] == "masked"].set_index("method")["MSE"]
    labels = {"median": "the adaptive median filter", "knn": "the k-NN mean"}
    shown = [m for m in labels if {"spackle", m} <= set(masked.index)]
    if shown:
        console.print("SpaCKLE's masked MSE is " + "; ".join(
            f"{1 - masked['spackle'] / masked[m]:.1%} lower than {labels[m]}'s ({masked['spackle']:.3f} vs "
            f"{masked[m]:.3f})" for m in shown) + ".")
    floor = noise_floor_line(table)
    if floor:
        console.print(floor)


def noise_floor_line(table) -> str | None:
    """One sentence on the hidden entries' counting-noise floor (``evaluate``'s ``noise_floor``; with
    ``noise_floor_std``, as :func:`spared.impute.evaluate.summarise` gives it, its spread over the masks), if known."""
    if "noise_floor" not in table:
        return None
    masked = table[table["target"] == "masked"].dropna(subset=["noise_floor"])
    if masked.empty:
        return None
    first = masked.iloc[0]
    spread = first.get("noise_floor_std")
    over = (f" ± {spread:.4f} over {int(first['n_masks'])} masks" if spread is not None and spread == spread
            and "n_masks" in first else "")
    return (f"counting-noise floor of the hidden entries: MSE {first['noise_floor']:.4f}{over} (what an oracle knowing "
            f"each entry's expected count would score; no method can go much below it)")
