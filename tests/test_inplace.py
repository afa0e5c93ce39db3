"""Every public function of spared.pp and spared.impute that takes an AnnData follows one convention (issue 30,
item 4; docs/data_model.md, "In place or a copy"): with a ``copy`` parameter, ``copy=False`` changes the AnnData
given and returns None, ``copy=True`` leaves it untouched and returns a new, changed AnnData; without one, the
function only reads it. The functions are found by walking both packages, so a new one fails here until it is
given a call in CALLS."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import spared.impute
import spared.pp
from spared.config import ProcessingConfig
from spared.impute.spackle import SpackleConfig

TINY = SpackleConfig(num_neighs=6, batch_size=64, max_steps=3, val_every=2, progress=False)


def public_functions() -> dict[str, Callable]:
    """``module.name`` → function, for every public function of spared.pp / spared.impute whose first parameter
    is ``adata``."""
    found = {}
    for package in (spared.pp, spared.impute):
        names = [package.__name__, *(m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + "."))]
        for name in names:
            module = importlib.import_module(name)
            for attr, fn in vars(module).items():
                if attr.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != name:
                    continue
                params = list(inspect.signature(fn).parameters)
                if params and params[0] == "adata":
                    found[f"{name}.{attr}"] = fn
    return found


def _model(processed):
    from spared.impute import spackle

    return spackle.fit(processed, config=TINY)


def _hidden(a):
    from spared.impute.evaluate import hide_values

    return hide_values(a, 0.1, 0)


#: ``module.name`` → (input: "raw", "processed" or "bare" (processed without its noisy layers and
#: ``obs["offpanel_counts"]``), extra arguments given the input and the shared context).
CALLS: dict[str, tuple[str, Callable[[Any, dict], dict]]] = {
    "spared.pp.combat.combat": ("processed", lambda a, c: {"layer": "log1p", "key_added": "c_again"}),
    "spared.pp.genes.ensembl_ids": ("raw", lambda a, c: {"organism": "human"}),
    "spared.pp.layers.compute_mask": ("processed", lambda a, c: {"key_added": "mask_again"}),
    "spared.pp.layers.deltas": ("processed", lambda a, c: {"layers": ["log1p"], "reference_split": "val"}),
    "spared.pp.layers.noisy_layers": ("bare", lambda a, c: {}),
    "spared.pp.moran.moran_genes": ("processed", lambda a, c: {"key_added": "moran_again"}),
    "spared.pp.moran.select_top_moran": ("processed", lambda a, c: {"n_top": 8}),
    "spared.pp.normalize.tpm": ("raw", lambda a, c: {"organism": "human", "layer": None}),
    "spared.pp.normalize.log1p": ("processed", lambda a, c: {"key_added": "log1p_again"}),
    "spared.pp.protocol.process": ("raw", lambda a, c: {
        "config": ProcessingConfig(top_moran_genes=8, complete_missing=False), "progress": False}),
    "spared.pp.protocol.step_table": ("processed", lambda a, c: {}),
    "spared.pp.qc.filter_spots": ("raw", lambda a, c: {"min_counts": float(np.median(a.X.sum(axis=1).A1))}),
    "spared.pp.qc.offpanel_counts": ("bare", lambda a, c: {}),
    "spared.pp.qc.expression_fractions": ("raw", lambda a, c: {}),
    "spared.pp.qc.filter_genes": ("raw", lambda a, c: {}),
    "spared.pp.splits.apply_split_scheme": ("raw", lambda a, c: {"scheme": f"loso:{a.obs['slide_id'].iloc[0]}"}),
    "spared.impute.evaluate.hide_values": ("processed", lambda a, c: {}),
    "spared.impute.evaluate.hide_spared": ("processed", lambda a, c: {}),
    "spared.impute.evaluate.hide_entries": ("processed", lambda a, c: {"protocol": "spared"}),
    "spared.impute.evaluate.spared_probabilities": ("processed", lambda a, c: {}),
    "spared.impute.evaluate.training_view": ("processed", lambda a, c: {"layer": "c_d_log1p"}),
    "spared.impute.evaluate.evaluate": ("processed", lambda a, c: {"methods": ["mean"]}),
    "spared.impute.evaluate.evaluate_fractions": ("processed", lambda a, c: {"fractions": (0.1,), "methods": ["mean"]}),
    "spared.impute.evaluate.hidden_view": ("processed", lambda a, c: {"layer": "c_d_log1p",
                                                                      "known": np.asarray(a.layers["mask"])}),
    "spared.impute.evaluate.scored_spots": ("processed", lambda a, c: {}),
    "spared.impute.median.adaptive_median_filter": ("processed", lambda a, c: {"key_added": "median_again"}),
    "spared.impute.noise_floor.noise_floor_entries": ("processed", lambda a, c: {"hidden": _hidden(a)}),
    "spared.impute.noise_floor.noise_floor": ("processed", lambda a, c: {"hidden": _hidden(a)}),
    "spared.impute.spackle.completion.complete": ("processed", lambda a, c: {"model": c["model"](),
                                                                              "key_added": "done"}),
    "spared.impute.spackle.data.neighbourhoods": ("processed", lambda a, c: {"layer": "c_d_log1p", "num_neighs": 6}),
    "spared.impute.spackle.inputs.observed_layer": ("processed", lambda a, c: {"layer": "c_d_log1p"}),
    "spared.impute.spackle.inputs.spot_depth": ("processed", lambda a, c: {"key": "offpanel_counts"}),
    "spared.impute.spackle.inputs.spot_layout": ("processed", lambda a, c: {}),
    "spared.impute.spackle.inputs.neighbour_table": ("processed", lambda a, c: {"num_neighs": 6}),
    "spared.impute.spackle.inputs.split_rows": ("processed", lambda a, c: {"split_key": "split",
                                                                           "splits": ["train"]}),
    "spared.impute.spackle.masking.glob_exp_frac": ("processed", lambda a, c: {"real": np.asarray(a.layers["mask"])}),
    "spared.impute.spackle.selection.selection_spots": ("processed", lambda a, c: {"config": TINY}),
    "spared.impute.spackle.train.fit": ("processed", lambda a, c: {"config": TINY}),
}

FUNCTIONS = public_functions()


def same(a: Any, b: Any) -> bool:
    """Deep equality of two values as stored in an AnnData (arrays, sparse matrices, frames, nested dicts)."""
    if isinstance(a, ad.AnnData) or isinstance(b, ad.AnnData):
        if not (isinstance(a, ad.AnnData) and isinstance(b, ad.AnnData)) or a.shape != b.shape:
            return False
        return all(same(getattr(a, f), getattr(b, f)) for f in ("X", "obs", "var", "obsm", "varm", "obsp",
                                                                "layers", "uns"))
    if isinstance(a, pd.DataFrame) or isinstance(b, pd.DataFrame):
        return isinstance(a, pd.DataFrame) and isinstance(b, pd.DataFrame) and a.equals(b) \
            and a.index.equals(b.index) and list(a.columns) == list(b.columns)
    if sp.issparse(a) or sp.issparse(b):
        return sp.issparse(a) and sp.issparse(b) and a.shape == b.shape and (a != b).nnz == 0
    if hasattr(a, "keys") and hasattr(b, "keys"):
        return set(a.keys()) == set(b.keys()) and all(same(a[k], b[k]) for k in a.keys())
    if isinstance(a, np.ndarray | list | tuple) or isinstance(b, np.ndarray | list | tuple):
        x, y = np.asarray(a), np.asarray(b)
        if x.dtype == object or y.dtype == object:
            return x.shape == y.shape and all(same(p, q) for p, q in zip(x.ravel(), y.ravel(), strict=True))
        return x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
    if a is None or b is None:
        return a is b
    return bool(a == b) or (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b))


@pytest.fixture(scope="module")
def context(processed_small):
    from spared.synthetic import make_collection

    raw = make_collection(n_slides=3, n_spots=60, n_genes=60, seed=8)
    models: dict[str, Any] = {}

    def model():
        if "model" not in models:
            models["model"] = _model(processed_small.copy())
        return models["model"]

    bare = processed_small.copy()
    for name in [n for n in bare.layers if n.startswith("noisy_")]:
        del bare.layers[name]
    del bare.obs["offpanel_counts"]
    return {"raw": raw, "processed": processed_small, "bare": bare, "model": model}


def timeless(adata: ad.AnnData) -> ad.AnnData:
    """A copy without the step durations :func:`spared.pp.process` records (they differ from run to run)."""
    out = adata.copy()
    steps = out.uns.get("spared", {}).get("steps")
    if steps is not None:
        out.uns["spared"]["steps"] = {k: v for k, v in steps.items() if k != "seconds"}
    return out


def test_every_public_function_is_covered():
    assert FUNCTIONS, "no public function found: the package walk is broken"
    missing = sorted(set(FUNCTIONS) - set(CALLS))
    assert not missing, f"new public function(s) {missing}: follow the in-place convention and add them to CALLS"
    stale = sorted(set(CALLS) - set(FUNCTIONS))
    assert not stale, f"CALLS names function(s) that no longer exist: {stale}"


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_function_follows_the_in_place_convention(name, context):
    fn = FUNCTIONS[name]
    if name not in CALLS:
        pytest.fail(f"{name} has no entry in CALLS")
    stage, arguments = CALLS[name]
    has_copy = "copy" in inspect.signature(fn).parameters
    given = context[stage].copy()
    before = given.copy()
    if not has_copy:
        fn(given, **arguments(given, context))
        assert same(given, before), f"{name} has no copy parameter, so it must only read its AnnData"
        return
    result = fn(given, **arguments(given, context), copy=True)
    assert isinstance(result, ad.AnnData) and result is not given, f"{name}(copy=True) must return a new AnnData"
    assert same(given, before), f"{name}(copy=True) changed the AnnData given"
    assert not same(result, before), f"{name}(copy=True) returned an unchanged copy"
    in_place = context[stage].copy()
    assert fn(in_place, **arguments(in_place, context)) is None, f"{name}(copy=False) must return None"
    assert same(timeless(in_place), timeless(result)), f"{name}(copy=False) must change the AnnData as copy=True does"


def test_same_tells_apart_what_the_convention_test_relies_on(processed_small):
    a = processed_small.copy()
    assert same(a, processed_small)
    a.uns["spared"]["new"] = 1
    assert not same(a, processed_small)
    b = processed_small.copy()
    b.layers["log1p"][0, 0] += 1
    assert not same(b, processed_small)
    c = processed_small[:, :5].copy()
    assert not same(c, processed_small)


def test_process_refuses_processed_input(processed_small):
    from spared.data_model import ValidationError
    from spared.pp import process

    with pytest.raises(ValidationError, match=r"already processed .*start from the raw file"):
        process(processed_small.copy(), progress=False)
