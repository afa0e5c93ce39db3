"""The SpaRED processing protocol (SPEC §2), one step after the other, with provenance in ``uns['spared']``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from spared.config import ProcessingConfig


class _StepLog:
    """Times each protocol step and records spots, genes and missing fraction after it."""

    def __init__(self, progress: bool, n_steps: int):
        self.rows: dict[str, list] = {"step": [], "seconds": [], "n_spots": [], "n_genes": []}
        self._progress = None
        if progress:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                      TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                      transient=True)
            self._task = self._progress.add_task("processing", total=n_steps)

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()

    def run(self, name: str, fn: Callable, adata):
        if self._progress is not None:
            self._progress.update(self._task, description=name)
        start = time.perf_counter()
        result = fn(adata)
        adata = adata if result is None else result
        self.rows["step"].append(name)
        self.rows["seconds"].append(time.perf_counter() - start)
        self.rows["n_spots"].append(adata.n_obs)
        self.rows["n_genes"].append(adata.n_vars)
        if self._progress is not None:
            self._progress.advance(self._task)
        return adata


def zero_fraction(x) -> float:
    """Fraction of entries equal to zero (sparse or dense)."""
    n = x.shape[0] * x.shape[1]
    nonzero = x.count_nonzero() if sp.issparse(x) else np.count_nonzero(x)
    return 1.0 - nonzero / n if n else float("nan")


def process(adata, config: ProcessingConfig | None = None, progress: bool = True, dataset: str | None = None):
    """Run the SpaRED protocol on a raw collection and return the processed AnnData (a new object).

    Steps: spot filter → expression fractions → gene filter → TPM → log2(x+1) → adaptive median filter →
    Moran's I and top-k genes → ComBat → mask → SpaCKLE completion (``config.complete_missing``) → deltas →
    noisy layers. Simulated collections carrying ``layers['true_rate']`` (expected counts; else
    ``true_counts``) also get ``true_log1p`` and ``c_true_log1p`` processed alike. Layers and columns are
    described in ``docs/data_model.md``.
    """
    from spared import __version__
    from spared.data_model import dense, validate
    from spared.impute.median import adaptive_median_filter
    from spared.io.provenance import record_warning
    from spared.pp.combat import combat, combat_apply
    from spared.pp.layers import compute_mask, deltas, noisy_layers
    from spared.pp.moran import moran_genes, select_top_moran
    from spared.pp.normalize import log1p, tpm, tpm_matrix
    from spared.pp.qc import expression_fractions, filter_genes, filter_spots

    cfg = config or ProcessingConfig()
    validate(adata, stage="raw")
    geometry, n_neighs, geometry_warning = _graph_geometry(adata, cfg)
    raw_zero_fraction = zero_fraction(adata.X)
    has_truth = "true_rate" in adata.layers or "true_counts" in adata.layers
    combat_key = cfg.combat_key
    state: dict = {}

    def counts_layer(a):
        a.layers["counts"] = sp.csr_matrix(a.X, dtype=np.float32)

    def truth_log1p(a):
        if has_truth:
            truth = a.layers["true_rate" if "true_rate" in a.layers else "true_counts"]
            true_tpm = tpm_matrix(truth, a.var["gene_length"].to_numpy())
            a.layers["true_log1p"] = np.log2(dense(true_tpm) + 1.0).astype(np.float32)

    def median(a):
        a.layers["log1p"] = dense(a.layers["log1p"])
        adaptive_median_filter(a, layer="log1p", key_added="d_log1p", n_neighs=n_neighs,
                               max_hops=cfg.median_max_hops, slide_key=cfg.slide_key)

    def moran(a):
        moran_genes(a, layer="d_log1p", n_neighs=n_neighs, slide_key=cfg.slide_key)
        return select_top_moran(a, cfg.top_moran_genes)

    def batch_correct(a):
        combat(a, key=combat_key, layer="log1p", key_added="c_log1p")
        state["combat"] = combat(a, key=combat_key, layer="d_log1p", key_added="c_d_log1p", return_params=True)
        if has_truth:
            truth = a.layers["true_log1p"]
            a.layers["c_true_log1p"] = (truth if state["combat"] is None else combat_apply(
                truth, a.obs[combat_key].astype(str).to_numpy(), state["combat"])).astype(np.float32)

    def dense_layers(a):
        for name in ("counts", "tpm", "log1p", "true_counts", "true_rate"):
            if name in a.layers and sp.issparse(a.layers[name]):
                a.layers[name] = a.layers[name].toarray().astype(np.float32)
        compute_mask(a, layer="tpm")
        expression_fractions(a, cfg.slide_key, layer="counts")

    def complete(a):
        if cfg.complete_missing:
            from spared.impute import spackle

            settings = spackle.SpackleConfig(max_steps=cfg.spackle_max_steps, seed=cfg.seed,
                                             slide_key=cfg.slide_key, split_key=cfg.split_key,
                                             progress=None if progress else False)
            model = spackle.fit(a, layer="c_d_log1p", config=settings)
            spackle.complete(a, model, layer="c_d_log1p", key_added="c_t_log1p")

    steps: list[tuple[str, Callable]] = [
        ("spot filter", lambda a: filter_spots(a, cfg.cell_min_counts, cfg.cell_max_counts)),
        ("expression fractions", lambda a: expression_fractions(a, cfg.slide_key)),
        ("gene filter", lambda a: filter_genes(
            a, cfg.gene_min_counts, cfg.gene_max_counts, cfg.min_exp_frac, cfg.min_glob_exp_frac,
            cfg.real_data_percentage, cfg.wildcard_genes, cfg.slide_key)),
        ("counts layer", counts_layer),
        ("TPM", lambda a: tpm(a, cfg.organism, layer="counts", key_added="tpm")),
        ("log2(TPM+1)", lambda a: (log1p(a, "tpm", "log1p"), truth_log1p(a))[0]),
        ("adaptive median filter", median),
        ("Moran's I selection", moran),
        ("mask", dense_layers),
        ("ComBat", batch_correct),
        ("SpaCKLE completion", complete),
        ("deltas", lambda a: deltas(a, split_key=cfg.split_key)),
        ("noisy layers", noisy_layers),
    ]
    if combat_key is not None and combat_key not in adata.obs:
        raise KeyError(f"combat_key {combat_key!r} is not a column of obs ({list(adata.obs.columns)}); "
                       f"set combat_key to one of them or to None")
    with _StepLog(progress, len(steps)) as steplog:
        out = adata.copy()
        for name, fn in steps:
            out = steplog.run(name, fn, out)
    out.uns["spared"] = {
        **dict(out.uns.get("spared", {})),
        "dataset": dataset or str(out.uns.get("spared", {}).get("dataset", "")),
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        "versions": {"spared": __version__, "anndata": _version("anndata"), "numpy": np.__version__},
        "steps": {k: np.asarray(v) for k, v in steplog.rows.items()},
        "raw_zero_fraction": raw_zero_fraction,
        "missing_fraction_before": zero_fraction(out.layers["log1p"]),
        "missing_fraction_after_median": zero_fraction(out.layers["d_log1p"]),
        "geometry": geometry,
    }
    if geometry_warning:
        record_warning(out, geometry_warning, issue=False)
    return out


def _graph_geometry(adata, cfg: ProcessingConfig) -> tuple[str, int, str | None]:
    """The spot lattice used for the spatial graphs: the one detected from the coordinates (else the configured
    ``hex_geometry``), its neighbour count, and a warning when detection contradicts the configuration."""
    import warnings

    from spared.graph import detect_geometry

    configured = "hexagonal" if cfg.hex_geometry else "square"
    detected = detect_geometry(adata.obsm["spatial"], adata.obs[cfg.slide_key].to_numpy())
    if detected is None or detected == configured:
        return configured, cfg.n_neighs, None
    n_neighs = 6 if detected == "hexagonal" else 8
    message = (f"the spot coordinates form a {detected} lattice but hex_geometry={cfg.hex_geometry}; the spatial "
               f"graphs (median filter, Moran's I) use {n_neighs} neighbours, as on a {detected} array")
    warnings.warn(message, UserWarning, stacklevel=3)
    return detected, n_neighs, message


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def step_table(adata):
    """The per-step provenance of a processed collection as a DataFrame."""
    import pandas as pd

    return pd.DataFrame(adata.uns["spared"]["steps"])


