"""The SpaRED processing protocol (SPEC §2), one step after the other, with provenance in ``uns['spared']``."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from spared.config import ProcessingConfig

#: Revision of what :func:`process` writes; part of every cache key, so caches made before a change rebuild.
#: 2: ``obs["total_counts"]`` and ``obs["offpanel_counts"]`` (the sequencing depth SpaCKLE reads).
PROTOCOL_REVISION = 2


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

    def run(self, name: str, fn: Callable, adata) -> None:
        """Run ``fn(adata)`` (a step that changes ``adata`` in place) and record it."""
        if self._progress is not None:
            self._progress.update(self._task, description=name)
        start = time.perf_counter()
        fn(adata)
        self.rows["step"].append(name)
        self.rows["seconds"].append(time.perf_counter() - start)
        self.rows["n_spots"].append(adata.n_obs)
        self.rows["n_genes"].append(adata.n_vars)
        if self._progress is not None:
            self._progress.advance(self._task)


def zero_fraction(x) -> float:
    """Fraction of entries equal to zero (sparse or dense)."""
    n = x.shape[0] * x.shape[1]
    nonzero = x.count_nonzero() if sp.issparse(x) else np.count_nonzero(x)
    return 1.0 - nonzero / n if n else float("nan")


def process(adata, config: ProcessingConfig | None = None, progress: bool = True, dataset: str | None = None,
            allow_non_integer: bool = False, copy: bool = False):
    """Run the SpaRED protocol on a raw collection: ``adata`` becomes the processed collection (``copy=False``,
    returns ``None``), or a processed copy is returned and ``adata`` left as it was (``copy=True``).

    Steps: gene ids (symbols mapped to Ensembl ids, :func:`spared.pp.ensembl_ids`) → spot filter → expression
    fractions → gene filter → TPM → log2(x+1) → adaptive median filter → Moran's I and top-k genes → ComBat →
    mask → SpaCKLE completion (``config.complete_missing``) → deltas → noisy layers. Simulated collections
    carrying ``layers['true_rate']`` (expected counts; else ``true_counts``) also get ``true_log1p`` and
    ``c_true_log1p`` processed alike. Layers and columns are described in ``docs/data_model.md``.

    Checked before any work: that ``adata`` is not already processed (a
    :class:`~spared.data_model.ValidationError`: start again from the raw collection), the data model
    (:func:`spared.validate`), that ``X`` holds integer counts (else a
    :class:`~spared.data_model.ValidationError`; ``allow_non_integer=True`` processes the values anyway with a
    warning) and that the train split has spots (the deltas' reference; again after the spot filter). A
    collection without val/test slides (one slide, one sample) is completed too: SpaCKLE then selects its
    weights on held-out blocks of its own spots (:func:`spared.impute.spackle.fit`). The steps run on a working
    copy, so an error leaves ``adata`` as it was even with ``copy=False``. Warnings raised by the steps (genes
    missing from the annotation, ...) are re-emitted and kept in ``uns['spared']['input_warnings']``.
    """
    from spared import __version__
    from spared.data_model import ValidationError, check_not_processed, check_splits, count_problem, dense, validate
    from spared.impute.median import adaptive_median_filter
    from spared.inplace import replace
    from spared.io.provenance import record_warning
    from spared.pp.combat import combat, combat_apply, combat_fit
    from spared.pp.genes import ensembl_ids
    from spared.pp.layers import compute_mask, deltas, noisy_layers
    from spared.pp.moran import moran_genes, select_top_moran
    from spared.pp.normalize import log1p, tpm, tpm_matrix
    from spared.pp.qc import expression_fractions, filter_genes, filter_spots, offpanel_counts
    from spared.pp.splits import apply_split_scheme

    cfg = config or ProcessingConfig()
    check_not_processed(adata)
    validate(adata, stage="raw")
    suspicious = count_problem(adata.X)
    if suspicious and not allow_non_integer:
        raise ValidationError(f"{suspicious}. spared expects raw UMI counts in X (TPM and log are computed by the "
                              f"protocol): put the raw counts in X, or pass --allow-non-integer (Python: "
                              f"allow_non_integer=True) to process these values as if they were counts")
    check_splits(adata.obs, cfg.split_key, cfg.slide_key)
    geometry, n_neighs, geometry_warning = _graph_geometry(adata, cfg)
    raw_zero_fraction = zero_fraction(adata.X)
    has_truth = "true_rate" in adata.layers or "true_counts" in adata.layers
    combat_key = cfg.combat_key

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
                               max_hops=cfg.median_max_hops, slide_key=cfg.slide_key, graphs=cfg.spatial_graphs)

    def moran(a):
        moran_genes(a, layer="d_log1p", n_neighs=n_neighs, slide_key=cfg.slide_key, graphs=cfg.spatial_graphs)
        select_top_moran(a, cfg.top_moran_genes)
        offpanel_counts(a, layer="counts")

    def batch_correct(a):
        combat(a, key=combat_key, layer="log1p", key_added="c_log1p")
        if not has_truth:
            combat(a, key=combat_key, layer="d_log1p", key_added="c_d_log1p")
            return
        # what combat(a, key=combat_key, layer="d_log1p", key_added="c_d_log1p") does (the layer and the key are
        # there: checked above), with its transform fitted once and also applied to the truth
        values = np.asarray(a.layers["d_log1p"])
        labels = None if combat_key is None else a.obs[combat_key].astype(str).to_numpy()
        params = None if labels is None or np.unique(labels).size < 2 else combat_fit(values, labels)
        if combat_key is None or a.obs[combat_key].nunique() < 2:
            a.layers["c_d_log1p"] = values.astype(np.float32, copy=True)
        else:
            a.layers["c_d_log1p"] = combat_apply(values, labels, params if params is not None else combat_fit(
                values, labels)).astype(np.float32)
        truth = a.layers["true_log1p"]
        a.layers["c_true_log1p"] = (truth if params is None else combat_apply(truth, labels, params)).astype(
            np.float32)

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
            a.uns.setdefault("spared", {})["completion"] = {
                "method": "spackle", "layer": "c_d_log1p", "key_added": "c_t_log1p", "selection": model.selection,
                "best_step": int(model.best_step or 0), "best_val_mse": float(model.best_val_mse or np.nan)}

    def spot_filter(a):
        filter_spots(a, cfg.cell_min_counts, cfg.cell_max_counts)
        check_splits(a.obs, cfg.split_key, cfg.slide_key, f"after the spot filter (cell_min_counts="
                     f"{cfg.cell_min_counts:g}, cell_max_counts={cfg.cell_max_counts:g})")

    steps: list[tuple[str, Callable]] = [
        ("gene ids", lambda a: ensembl_ids(a, cfg.organism)),
        ("spot filter", spot_filter),
        ("expression fractions", lambda a: expression_fractions(a, cfg.slide_key)),
        ("gene filter", lambda a: filter_genes(
            a, cfg.gene_min_counts, cfg.gene_max_counts, cfg.min_exp_frac, cfg.min_glob_exp_frac,
            cfg.real_data_percentage, cfg.wildcard_genes, cfg.slide_key)),
        ("counts layer", counts_layer),
        ("TPM", lambda a: tpm(a, cfg.organism, layer="counts", key_added="tpm", min_known_fraction=0)),
        ("log2(TPM+1)", lambda a: (log1p(a, "tpm", "log1p"), truth_log1p(a))),
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
    with _StepLog(progress, len(steps)) as steplog, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = adata.copy()
        apply_split_scheme(out, cfg.split_scheme, slide_key=cfg.slide_key, split_key=cfg.split_key)
        for name, fn in steps:
            steplog.run(name, fn, out)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    messages = [suspicious] if suspicious else []
    messages += list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    if suspicious:
        warnings.warn(f"{suspicious}; processed as counts because allow_non_integer=True", UserWarning,
                      stacklevel=2)
    out.uns["spared"] = {
        **dict(out.uns.get("spared", {})),
        "input_warnings": messages,
        "dataset": dataset or str(out.uns.get("spared", {}).get("dataset", "")),
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        "preset": cfg.preset_name,
        "versions": {"spared": __version__, "anndata": _version("anndata"), "numpy": np.__version__},
        "steps": {k: np.asarray(v) for k, v in steplog.rows.items()},
        "raw_zero_fraction": raw_zero_fraction,
        "missing_fraction_before": zero_fraction(out.layers["log1p"]),
        "missing_fraction_after_median": zero_fraction(out.layers["d_log1p"]),
        "geometry": geometry,
    }
    if geometry_warning:
        record_warning(out, geometry_warning, issue=False)
    validate(out, stage="processed")  # every layer finite: a step that produced NaN/inf is named, not cached
    if copy:
        return out
    replace(adata, out)
    return None


def _graph_geometry(adata, cfg: ProcessingConfig) -> tuple[str, int, str | None]:
    """The spot lattice used for the spatial graphs, its neighbour count, and a warning when it contradicts the
    configured ``hex_geometry``.

    The lattice is the one the reader recorded (ST and HEST readers know it), else the one detected from the
    coordinates (:func:`spared.graph.detect_geometry`), else the configured ``hex_geometry``.
    """
    import warnings

    from spared.graph import GRAPH_DEGREE, detect_geometry
    from spared.io.readers import geometry

    configured = "hexagonal" if cfg.hex_geometry else "square"
    recorded = {"hex": "hexagonal", "square": "square"}.get(geometry(adata, by_format=False))
    found = recorded or detect_geometry(adata.obsm["spatial"], adata.obs[cfg.slide_key].to_numpy())
    if found is None or found == configured:
        return configured, cfg.n_neighs, None
    n_neighs = GRAPH_DEGREE[found]
    how = "reader records" if recorded else "spot coordinates form"
    message = (f"the {how} a {found} lattice but hex_geometry={cfg.hex_geometry}; the spatial graphs (median "
               f"filter, Moran's I) use {n_neighs} neighbours, as on a {found} array")
    warnings.warn(message, UserWarning, stacklevel=3)
    return found, n_neighs, message


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def step_table(adata):
    """The per-step provenance of a processed collection as a DataFrame."""
    import pandas as pd

    return pd.DataFrame(adata.uns["spared"]["steps"])


