"""Split schemes: the catalogue's splits, leave-one-patient-out and leave-one-slide-out folds."""

import json

import numpy as np
import pytest

from spared.config import ProcessingConfig
from spared.pp.splits import apply_split_scheme, assign_splits, fold_schemes, parse_split_scheme

PATIENTS = ["A", "A", "B", "C", "C", "D"]
SLIDES = ["A1", "A2", "B1", "C1", "C2", "D1"]


@pytest.mark.parametrize(("scheme", "expected"), [
    ("lopo:C", ["train", "train", "train", "test", "test", "val"]),
    ("lopo:D", ["val", "val", "train", "train", "train", "test"]),
    ("lopo:A:C", ["test", "test", "train", "val", "val", "train"]),
    ("loso:C1", ["train", "train", "train", "test", "val", "train"]),
    ("loso:D1:A2", ["train", "val", "train", "train", "train", "test"]),
])
def test_leave_one_out_assignments(scheme, expected):
    assert assign_splits(PATIENTS, SLIDES, scheme) == expected


def test_every_fold_holds_each_patient_out_once():
    folds = fold_schemes(PATIENTS, SLIDES, "lopo")
    assert folds == ("lopo:A", "lopo:B", "lopo:C", "lopo:D")
    held = [tuple(p for p, s in zip(PATIENTS, assign_splits(PATIENTS, SLIDES, f), strict=True) if s == "test")
            for f in folds]
    assert [set(h) for h in held] == [{"A"}, {"B"}, {"C"}, {"D"}]
    for fold in folds:
        splits = assign_splits(PATIENTS, SLIDES, fold)
        per_patient = {p: {s for q, s in zip(PATIENTS, splits, strict=True) if q == p} for p in set(PATIENTS)}
        assert all(len(v) == 1 for v in per_patient.values())  # no patient spans two splits
    assert len(fold_schemes(PATIENTS, SLIDES, "loso")) == 6


@pytest.mark.parametrize(("scheme", "message"), [
    ("lopo", "is not valid"), ("lopo:", "is not valid"), ("kfold:3", "is not valid"), ("lopo:A:B:C", "is not valid"),
    ("lopo:Z", r"no patient 'Z'; the patients are \['A', 'B', 'C', 'D'\]"),
    ("lopo:A:A", "the validation patient must be another"), ("lopo:A:Q", "the validation patient must be another"),
])
def test_bad_schemes_are_rejected(scheme, message):
    with pytest.raises(ValueError, match=message):
        assign_splits(PATIENTS, SLIDES, scheme)


def test_too_few_patients_is_an_error():
    with pytest.raises(ValueError, match=r"needs at least 3 patients \(test, val and train\), found 2"):
        assign_splits(["A", "B"], ["A1", "B1"], "lopo:A")


def test_config_validates_and_parses_the_scheme():
    assert ProcessingConfig().split_scheme == "catalogue"
    assert ProcessingConfig().with_overrides(["split_scheme=lopo:P2"]).split_scheme == "lopo:P2"
    with pytest.raises(ValueError, match="split_scheme 'lopo' is not valid"):
        ProcessingConfig(split_scheme="lopo")
    assert str(parse_split_scheme(" lopo:A:B ")) == "lopo:A:B"


def test_apply_reassigns_whole_slides(raw_small):
    adata = raw_small.copy()
    adata.obs["patient"] = adata.obs["slide_id"].map({"slide0": "p0", "slide1": "p1", "slide2": "p2"}).astype(str)
    apply_split_scheme(adata, "catalogue")
    np.testing.assert_array_equal(adata.obs["split"], raw_small.obs["split"])
    apply_split_scheme(adata, "lopo:p1")
    assert adata.obs.groupby("slide_id", observed=True)["split"].first().to_dict() == {
        "slide0": "train", "slide1": "test", "slide2": "val"}
    mixed = adata.copy()
    mixed.obs.loc[mixed.obs_names[:3], "patient"] = "p9"
    with pytest.raises(ValueError, match="have spots of several patients"):
        apply_split_scheme(mixed, "lopo:p1")


def test_process_uses_the_scheme_for_splits_and_train_means(raw_small):
    from spared.pp import process

    raw = raw_small.copy()
    raw.obs["patient"] = raw.obs["slide_id"].map({"slide0": "p0", "slide1": "p1", "slide2": "p2"}).astype(str)
    cfg = ProcessingConfig(top_moran_genes=16, complete_missing=False, split_scheme="lopo:p0")
    out = process(raw, cfg, progress=False, copy=True)
    splits = out.obs.groupby("slide_id", observed=True)["split"].first().to_dict()
    assert splits == {"slide0": "test", "slide1": "val", "slide2": "train"}
    train = (out.obs["split"] == "train").to_numpy()
    np.testing.assert_allclose(out.var["log1p_avg_exp"], np.asarray(out.layers["log1p"])[train].mean(axis=0),
                               rtol=1e-5)
    assert json.loads(out.uns["spared"]["config"])["split_scheme"] == "lopo:p0"
