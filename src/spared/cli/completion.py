"""``spared complete`` and ``spared evaluate-completion``: fill missing expression values, compare methods."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from spared.cli.app import app, console, writable_file
from spared.cli.processing import fail, noise_floor_line, read_h5ad, write_h5ad
from spared.impute.spackle.config import MIN_AUTO_STEPS, PRESETS, SpackleConfig

_METHODS = ("spackle", "median", "mean", "knn")
_SHOWN_METRICS = ("MSE", "MAE", "PCC-Gene", "PCC-Patch")
_STEPS_HELP = ("SpaCKLE training steps (default: sized to the collection, "
               f"{SpackleConfig.passes:g} passes over its spots, at least {MIN_AUTO_STEPS}; "
               "the 'accurate' preset: at least 1000).")
_ENSEMBLE_HELP = ("SpaCKLE networks trained (seeds seed, seed+1, ...) and averaged; 3 lower the error by "
                  "0.5-1.2 % for 3x the time (default: 1, or the preset's).")
_PRESET_HELP = (f"SpaCKLE settings: {', '.join(PRESETS)}. 'accurate' = 3 layers, one masking rate for every "
                "gene, neighbours masked at a third of the rate, at least 1000 steps, 3 networks averaged: "
                "1-2 % lower error for 3-4x the time.")


def _busy(message: str, trains_spackle: bool):
    """A spinner with ``message``, unless SpaCKLE trains (it shows its own progress bar with the validation MSE)."""
    return nullcontext() if trains_spackle else console.status(message)


def _spackle_config(max_steps: int | None, seed: int, ensemble: int | None = None, preset: str = "default"):
    """The preset's SpaCKLE settings with the options given on the command line on top."""
    given = {"max_steps": max_steps, "ensemble": ensemble}
    try:
        return SpackleConfig.preset(preset, seed=seed, **{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        raise fail(str(exc)) from exc


@app.command()
def complete(
    input: Annotated[Path, typer.Argument(help="Processed collection (.h5ad).")],
    output: Annotated[Path, typer.Argument(help="Where to write the completed collection (.h5ad).")],
    method: Annotated[str, typer.Option(help=f"Completion method: {', '.join(_METHODS)}.")] = "spackle",
    checkpoint: Annotated[Path | None, typer.Option(help="SpaCKLE checkpoint folder to apply.")] = None,
    train: Annotated[bool, typer.Option("--train", help="Train SpaCKLE on the input (the default without "
                                                         "--checkpoint; a single slide or sample selects its "
                                                         "weights on held-out blocks of its spots).")] = False,
    max_steps: Annotated[int | None, typer.Option(help=_STEPS_HELP)] = None,
    ensemble: Annotated[int | None, typer.Option(help=_ENSEMBLE_HELP, show_default=False)] = None,
    preset: Annotated[str, typer.Option(help=_PRESET_HELP)] = "default",
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    save_checkpoint: Annotated[Path | None, typer.Option(help="Save the trained SpaCKLE here.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing checkpoint at "
                                                                 "--save-checkpoint.")] = False,
    layer: Annotated[str, typer.Option(help="Layer to complete.")] = "c_d_log1p",
    key_added: Annotated[str, typer.Option(help="Layer to write.")] = "c_t_log1p",
) -> None:
    """Complete the missing entries (layers['mask'] == False) of a layer; real entries are kept as they are.

    With no option SpaCKLE is trained on the input and applied to it (one slide or one sample included).
    """
    from spared.data_model import dense, require_finite
    from spared.impute.baselines import SpackleMethod, make_method

    if method not in _METHODS:
        raise fail(f"unknown method {method!r}; choose one of {', '.join(_METHODS)}")
    spackle_config = _spackle_config(max_steps, seed, ensemble, preset)
    training = {"--max-steps": max_steps is not None, "--ensemble": ensemble is not None,
                "--preset": preset != "default"}
    if method != "spackle":
        spackle_only = [k for k, v in {"--checkpoint": checkpoint is not None, "--train": train,
                                       "--save-checkpoint": save_checkpoint is not None, **training}.items() if v]
        if spackle_only:
            raise fail(f"{', '.join(spackle_only)} apply to --method spackle only; {method!r} has no network to "
                       f"train or load: remove {'them' if len(spackle_only) > 1 else 'it'}")
    if checkpoint is not None and train:
        raise fail("--checkpoint DIR applies a saved model and --train trains a new one: give one of them")
    if checkpoint is not None and any(training.values()):
        given = ", ".join(k for k, v in training.items() if v)
        raise fail(f"{given} set how SpaCKLE trains, but --checkpoint applies a network trained before (it keeps "
                   f"the settings it was trained with): remove {given}, or drop --checkpoint to train anew")
    writable_file(output)
    if save_checkpoint is not None:
        from spared.impute.spackle.checkpoint import check_destination

        try:
            check_destination(save_checkpoint, overwrite)
        except (FileExistsError, ValueError) as exc:
            raise fail(str(exc)) from exc
    adata = read_h5ad(input)
    try:
        if checkpoint is not None:
            from spared.impute import spackle

            impl = SpackleMethod(model=spackle.load(checkpoint))
        elif method == "spackle":
            impl = SpackleMethod(spackle_config)
        else:
            impl = make_method(method)
        with _busy(f"completing {layer!r} with {method}", method == "spackle" and checkpoint is None):
            impl.fit(adata, layer)
            impl.complete(adata, layer, key_added)
        require_finite(dense(adata.layers[key_added]), f"layer {key_added!r} completed by {method}",
                       dense(adata.layers["mask"]))
        if save_checkpoint is not None:
            impl.model.save(save_checkpoint)
            console.print(f"saved the SpaCKLE checkpoint to {save_checkpoint}")
    except (KeyError, ValueError, TypeError, FileNotFoundError, FileExistsError) as exc:
        raise fail(str(exc).strip("'\"")) from exc
    write_h5ad(adata, output)
    n_missing = int((~adata.layers["mask"]).sum())
    console.print(f"completed {n_missing} missing entries of {layer!r} into {key_added!r}; wrote {output}")


_PROTOCOL_HELP = ("Which values are hidden. 'uniform': a fraction (--mask-fraction, 10 %) of the val/test spots' "
                  "measured values, every method trained per mask on all the rest (the stricter test). 'spared': "
                  "the SpaCKLE authors' protocol, each measured val/test value hidden with its gene's dropout rate "
                  "min(1, (1-f)/f), every method fitted once on the train split, --n-masks masks.")


def _mean_std(value, std, digits: int = 3, percent: bool = False) -> str:
    """``value ± std`` (``value`` alone without a std), as a number or a percentage; ``n/a`` for a missing value."""
    if value is None:
        return "n/a"
    scale, unit = (100, " %") if percent else (1, "")
    text = f"{value * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if std is not None else "") + unit


@app.command("evaluate-completion")
def evaluate_completion(
    input: Annotated[Path, typer.Argument(help="Processed collection (.h5ad).")],
    methods: Annotated[str, typer.Option(help="Comma-separated methods to compare.")] = ",".join(_METHODS),
    protocol: Annotated[str, typer.Option(help=_PROTOCOL_HELP)] = "uniform",
    n_masks: Annotated[int | None, typer.Option(
        help="Masks scored, seeds --seed, --seed+1, ... (default: 1 with 'uniform', 10 with 'spared').",
        show_default=False)] = None,
    mask_fraction: Annotated[float | None, typer.Option(
        help="Fraction of val/test real entries a 'uniform' mask hides (default 0.1).", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first mask and of SpaCKLE training.")] = 0,
    max_steps: Annotated[int | None, typer.Option(help=_STEPS_HELP)] = None,
    ensemble: Annotated[int | None, typer.Option(help=_ENSEMBLE_HELP, show_default=False)] = None,
    preset: Annotated[str, typer.Option(help=_PRESET_HELP)] = "default",
    layer: Annotated[str, typer.Option(help="Layer to complete.")] = "c_d_log1p",
    truth_layer: Annotated[str | None, typer.Option(
        help="Layer with the true values (default: c_true_log1p when present).")] = None,
    per_mask: Annotated[bool, typer.Option("--per-mask", help="One row per mask instead of mean ± std.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON records.")] = False,
) -> None:
    """Hide real values of the val/test spots, complete them with each method, and score them."""
    from spared.impute.evaluate import PROTOCOLS, evaluate, summarise

    names = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = sorted(set(names) - set(_METHODS))
    if unknown or not names:
        raise fail(f"unknown method(s) {unknown}; choose among {', '.join(_METHODS)}")
    if protocol not in PROTOCOLS:
        raise fail(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol == "spared" and mask_fraction is not None:
        raise fail("--mask-fraction applies to --protocol uniform; the spared protocol hides each gene's values "
                   "with its own dropout rate")
    if n_masks is not None and n_masks < 1:
        raise fail(f"--n-masks must be at least 1, got {n_masks}")
    fraction = 0.1 if mask_fraction is None else mask_fraction
    spackle_config = _spackle_config(max_steps, seed, ensemble, preset)
    adata = read_h5ad(input)
    if truth_layer is None and "c_true_log1p" in adata.layers:
        truth_layer = "c_true_log1p"
    try:
        with _busy(f"evaluating {', '.join(names)}", "spackle" in names):
            table = evaluate(adata, names, fraction, seed, layer, truth_layer, spackle_config,
                             protocol=protocol, n_masks=n_masks)
    except (KeyError, ValueError, TypeError) as exc:
        raise fail(str(exc).strip("'\"")) from exc
    summary = None if per_mask else summarise(table)
    shown = table if per_mask else summary
    records = shown.astype(object).where(shown.notna(), None).to_dict(orient="records")
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    masks = table["mask"].unique()
    hidden = (f"{fraction:.0%} of val/test real values hidden" if protocol == "uniform"
              else "val/test real values hidden at their gene's dropout rate")
    seeds = f"seed {masks[0]}" if len(masks) == 1 else f"{len(masks)} masks, seeds {masks[0]}-{masks[-1]}"
    out = Table(title=f"completion of {layer!r}, protocol {protocol!r}: {hidden} ({seeds})")
    metrics = _SHOWN_METRICS if per_mask else ("MSE", "PCC-Gene")
    columns = ["method", "target", *(["mask"] if per_mask else []), "entries", *metrics,
               *([] if per_mask else ["vs median", "vs k-NN"]), "fit s", "s" if per_mask else "s/mask"]
    for col in columns:
        out.add_column(col, justify="left" if col in ("method", "target") else "right")
    for rec in records:
        cells = [rec["method"], rec["target"], *([str(rec["mask"])] if per_mask else []),
                 f"{rec['n_entries']:.0f}"]
        cells += [_mean_std(rec[m], rec.get(f"{m}_std")) for m in metrics]
        if not per_mask:
            cells += [_mean_std(rec[f"below_{b}"], rec[f"below_{b}_std"], 1, percent=True)
                      if rec["method"] != b and rec[f"below_{b}"] is not None else "" for b in ("median", "knn")]
        cells += [f"{rec['fit_seconds']:.1f}", f"{rec['seconds']:.1f}"]
        out.add_row(*cells)
    out.caption = noise_floor_line(summarise(table) if per_mask else summary)
    console.print(out)
