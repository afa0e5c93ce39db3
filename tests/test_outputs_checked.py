"""Outputs are validated: corrupt or diverged SpaCKLE checkpoints, non-finite completed layers, processed files."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from spared.cli import app
from spared.data_model import ValidationError, validate
from spared.impute import spackle
from spared.impute.spackle import SpackleConfig, SpackleModel, SpackleNetwork
from spared.impute.spackle.checkpoint import CheckpointError

GENES = [f"gene{g}" for g in range(6)]
CONFIG = SpackleConfig(num_neighs=4, max_steps=1)


def collection(seed: int = 0) -> ad.AnnData:
    """Two 8 × 8 slides with a quarter of the entries missing."""
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(8.0), np.arange(8.0))
    coords = np.column_stack([xs.ravel(), ys.ravel()])
    obs = pd.DataFrame({"slide_id": np.repeat(["a", "b"], 64), "split": np.repeat(["train", "val"], 64)},
                       index=[f"s{i}" for i in range(128)])
    adata = ad.AnnData(obs=obs, var=pd.DataFrame(index=GENES))
    adata.layers["c_d_log1p"] = rng.uniform(1, 4, (128, len(GENES))).astype(np.float32)
    adata.layers["mask"] = rng.random((128, len(GENES))) > 0.25
    adata.obsm["spatial"] = np.vstack([coords, coords])
    adata.obs["offpanel_counts"] = rng.integers(100, 1000, 128).astype(float)
    return adata


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = SpackleModel(SpackleNetwork.from_config(CONFIG, len(GENES)).eval(), CONFIG, list(GENES))
    return model.save(tmp_path / "ckpt")


def test_a_sound_checkpoint_completes_every_missing_entry(checkpoint):
    adata = spackle.complete(collection(), spackle.load(checkpoint), copy=True)
    assert np.isfinite(adata.layers["c_t_log1p"]).all()


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_corrupt_weights_name_the_file(checkpoint, damage):
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"random": np.random.default_rng(0).bytes(len(data)), "truncated": data[: len(data) // 2],
                         "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=str(weights)) as info:
        spackle.load(checkpoint)
    assert "SafetensorError" not in type(info.value).__name__ and "spackle" in str(info.value).lower()


@pytest.mark.parametrize("text", ["{not json", '{"format": "spared.spackle", "format_version": 1}', "[]", "\xff\xfe"])
def test_broken_metadata_names_the_file(checkpoint, text):
    (checkpoint / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointError, match=str(checkpoint / "config.json")):
        spackle.load(checkpoint)


def test_non_finite_weights_are_refused_at_load(checkpoint):
    from safetensors.torch import load_file, save_file

    weights = checkpoint / "model.safetensors"
    state = load_file(weights)
    name = sorted(state)[0]
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, weights, metadata={"format": "spared.spackle", "format_version": "1"})
    with pytest.raises(CheckpointError, match=rf"(?s){weights}.*non-finite.*{name}"):
        spackle.load(checkpoint)


def test_a_diverged_model_does_not_fill_missing_values_with_nan():
    network = SpackleNetwork.from_config(CONFIG, len(GENES))
    with torch.no_grad():
        network.head.bias.fill_(float("inf"))
    adata = collection()
    with pytest.raises(ValueError, match=r"non-finite.*\d+ of \d+ missing"):
        spackle.complete(adata, SpackleModel(network, CONFIG, list(GENES)))
    assert "c_t_log1p" not in adata.layers


def test_cli_complete_refuses_a_corrupt_checkpoint_without_traceback(checkpoint, tmp_path):
    source = tmp_path / "in.h5ad"
    collection().write_h5ad(source)
    (checkpoint / "model.safetensors").write_bytes(b"\x00" * 40)
    result = CliRunner().invoke(app, ["complete", str(source), str(tmp_path / "out.h5ad"), "--checkpoint",
                                      str(checkpoint)])
    assert result.exit_code == 1, result.output
    assert "model.safetensors" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "out.h5ad").exists()


def test_cli_complete_refuses_nan_output(tmp_path):
    network = SpackleNetwork.from_config(CONFIG, len(GENES))
    with torch.no_grad():
        network.head.weight.fill_(float("nan"))
    # a checkpoint whose weights are finite on disk cannot be built this way, so write the NaN one by hand
    from safetensors.torch import save_file

    folder = tmp_path / "nan_ckpt"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, folder / "model.safetensors")
    meta = {"format": "spared.spackle", "format_version": 1,
            **SpackleModel(network, CONFIG, list(GENES)).metadata()}
    (folder / "config.json").write_text(json.dumps(meta))
    source = tmp_path / "in.h5ad"
    collection().write_h5ad(source)
    result = CliRunner().invoke(app, ["complete", str(source), str(tmp_path / "out.h5ad"), "--checkpoint",
                                      str(folder)])
    assert result.exit_code == 1 and "non-finite" in result.output
    assert not (tmp_path / "out.h5ad").exists()


def test_validate_processed_checks_every_layer_is_finite(processed_small):
    adata = processed_small.copy()
    validate(adata, stage="processed")
    for layer in ("c_d_deltas", "noisy_c_d_log1p", "d_log1p"):
        if layer not in adata.layers:
            continue
        broken = adata.copy()
        values = np.array(broken.layers[layer], dtype=np.float32)
        values[3, 2] = np.nan
        broken.layers[layer] = values
        with pytest.raises(ValidationError, match=rf"layer '{layer}' contains NaN or inf"):
            validate(broken, stage="processed")
    completed = adata.copy()
    completed.layers["c_t_log1p"] = np.where(completed.layers["mask"], completed.layers["c_d_log1p"], np.nan)
    with pytest.raises(ValidationError, match=r"c_t_log1p.*NaN"):
        validate(completed, stage="processed")
