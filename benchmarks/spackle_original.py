"""The original library's SpaCKLE (``spared`` 2.2.1) on a processed collection: training time, or training and
prediction of given hidden entries. Prints one JSON line.

Run by ``bench_spackle.py`` with the Python of a separate virtual environment where ``spared==2.2.1`` is installed
(never imported by this project). It builds the original ``ImputationDataset`` and ``GeneImputationModel`` with
their default arguments except the ones matched to ours (batch size, neighbours, layer) and trains them with a
Lightning ``Trainer`` on CPU (the original's own ``train_spackle`` hard-codes a GPU), as the original trains:
on the train split (its masking: ``mask_prob / glob_exp_frac``; its loss over every entry of each neighbourhood),
Adam at 1e-3, validated every 10 steps on freshly masked val-split spots (the test split when there is no val
split), the weights of the lowest validation MSE kept (its ``ModelCheckpoint`` on ``val_MSE``).

One fix is needed on real tissue: the original reads a spot's neighbours from *column* ``idx`` of squidpy's
k-nearest-neighbour connectivity matrix (the spots that count it among their k nearest), whose size varies
on irregular tissue, so batching fails ("stack expects each tensor to be equal size"). The dataset below
transposes that dense matrix after the original builds it, so each spot reads exactly its k nearest spots;
the work per item (a scan of one dense column) is unchanged. Nothing else is changed: the transformer is built
as the original builds it (``batch_first=False`` on ``(batch, 1 + k, genes)`` input, so a spot attends to the
other spots of its batch, not to its neighbours), and neighbours come from the whole split, across slides.

Modes:

- ``--steps A B ...``: time one fit per step count (validation once, at the last step).
- ``--score MASKS.npz --out PRED.npz``: train once (``--max-steps``, default 1,000: the library's
  ``spackle_cleaner`` default), probe how the trained network reads its input (its prediction for a spot when
  the spot's neighbours are swapped for another spot's, and when the spot sits in a smaller batch), then predict
  row 0 of every val/test spot for each input of ``MASKS.npz``
  (``hidden``: ``(M, n, G)`` bool, the entries each mask hides; ``inputs_<variant>``: ``(M, n, G)`` float32,
  the layer as the model reads it for that mask), in batches of 256 spots in ``obs`` order (the original's test
  loaders; its ``drop_last`` is not applied, so every spot is predicted). ``PRED.npz`` holds
  ``pred_<variant>``: ``(M, n, G)`` float32 (NaN outside the val/test spots).

Usage::

    /path/to/original/venv/bin/python benchmarks/spackle_original.py DATA.h5ad --steps 20 40
    /path/to/original/venv/bin/python benchmarks/spackle_original.py DATA.h5ad --score masks.npz --out pred.npz
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

EVAL_SPLITS = ("val", "test")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _original_classes():
    """The original's dataset (neighbour columns transposed, see the module docstring), model and helpers."""
    import spared

    # the original's modules import each other as top-level ``spackle.*``
    sys.path.insert(0, str(Path(spared.__file__).parent))
    from spackle.dataset import ImputationDataset
    from spackle.model import GeneImputationModel
    from spackle.utils import get_args_dict, get_mask_prob_tensor

    class KNearestDataset(ImputationDataset):
        def get_adjacency(self, num_neighs: int = 6) -> None:
            super().get_adjacency(num_neighs)
            self.adj_mat = self.adj_mat.T.contiguous()

    return KNearestDataset, GeneImputationModel, get_args_dict, get_mask_prob_tensor


def _splits(adata):
    train = adata[adata.obs["split"] == "train"].copy()
    val = adata[adata.obs["split"] == "val"].copy()
    return train, val if val.n_obs else adata[adata.obs["split"] == "test"].copy()


def _build(adata, args, max_steps: int, val_every: int, seed: int, classes: tuple | None = None,
           splits: tuple | None = None):
    """The original's datasets, model and trainer, as its ``train_spackle`` builds them (on CPU); ``classes``
    (:func:`_original_classes`) and ``splits`` (:func:`_splits`) when made already."""
    import lightning as L
    from torch.utils.data import DataLoader

    dataset, model_class, get_args_dict, get_mask_prob_tensor = classes or _original_classes()
    settings = get_args_dict({"batch_size": args.batch_size, "num_neighs": args.num_neighs,
                              "val_check_interval": val_every})
    L.seed_everything(seed, verbose=False)
    train, val = splits or _splits(adata)
    train_data = dataset(train, settings, "train", args.layer)
    val_data = dataset(val, settings, "val", args.layer)
    probs = get_mask_prob_tensor(settings["masking_method"], adata, settings["mask_prob"], settings["scale_factor"])
    model = model_class(args=settings, data_input_size=adata.n_vars, lr=1e-3, optimizer="Adam",
                        train_mask_prob_tensor=probs, val_test_mask_prob_tensor=probs)
    loaders = (DataLoader(train_data, batch_size=args.batch_size, shuffle=True, drop_last=True),
               DataLoader(val_data, batch_size=args.batch_size, shuffle=True, drop_last=True))
    return settings, model, loaders, dataset


def _trainer(max_steps: int, val_every: int, callbacks: list):
    import lightning as L

    return L.Trainer(max_steps=max_steps, val_check_interval=val_every, check_val_every_n_epoch=None,
                     accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     callbacks=callbacks)


def time_fits(adata, args) -> dict:
    results = {"fits": []}
    classes, splits = _original_classes(), _splits(adata)  # outside the timed fits
    for steps in args.steps:
        start = time.perf_counter()
        _, model, (train, val), _ = _build(adata, args, steps, steps, 0, classes, splits)
        _trainer(steps, steps, []).fit(model, train, val)
        results["fits"].append({"steps": steps, "seconds": time.perf_counter() - start})
    return results


def train_and_predict(adata, args) -> dict:
    """Train once as the original trains, keep its best validated weights, predict every mask's val/test spots."""
    import lightning as L
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    class KeepBest(L.Callback):
        """The weights of the lowest ``val_MSE`` (what the original's ``ModelCheckpoint`` keeps), in memory."""

        def __init__(self) -> None:
            self.best, self.step, self.state, self.validations = float("inf"), None, None, 0

        def on_validation_end(self, trainer, module) -> None:
            value = float(trainer.callback_metrics["val_MSE"])
            self.validations += 1
            if value < self.best:
                self.best, self.step = value, int(trainer.global_step)
                self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    masks = np.load(args.score)
    hidden = masks["hidden"]
    variants = sorted(k.removeprefix("inputs_") for k in masks.files if k.startswith("inputs_"))
    cpu, wall = time.process_time(), time.perf_counter()
    settings, model, (train, val), dataset = _build(adata, args, args.max_steps, 10, args.seed)
    keep = KeepBest()
    trainer = _trainer(args.max_steps, 10, [keep])
    trainer.fit(model, train, val)
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu
    model.load_state_dict(keep.state)
    model.eval()
    rows = np.flatnonzero(adata.obs["split"].isin(EVAL_SPLITS).to_numpy())
    out, cpu, wall = {}, time.process_time(), time.perf_counter()
    split_rows = {split: np.flatnonzero(adata.obs["split"].to_numpy() == split) for split in EVAL_SPLITS}
    for variant in variants:
        inputs = masks[f"inputs_{variant}"]
        pred = np.full(hidden.shape, np.nan, dtype=np.float32)
        for m in range(hidden.shape[0]):
            for split, on in split_rows.items():  # one dataset per split, as the original tests each split
                if on.size == 0:
                    continue
                part = adata[on].copy()
                part.layers["masked_expression_matrix"] = inputs[m][on]
                part.layers["random_mask"] = hidden[m][on]
                loader = DataLoader(dataset(part, settings, split, args.layer, pre_masked=True),
                                    batch_size=args.batch_size, shuffle=False)
                chunks = []
                with torch.inference_mode():
                    for batch in loader:
                        chunks.append(model.pred_outputs_from_batch(batch, pre_masked_batch=True)[0][:, 0, :])
                pred[m][on] = torch.cat(chunks).numpy()
        out[f"pred_{variant}"] = pred
    np.savez_compressed(args.out, **out)
    predict_wall, predict_cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {**_probe(model, loader), "steps": int(trainer.global_step), "best_step": keep.step,
            "best_val_mse": keep.best, "validations": keep.validations, "train_seconds": train_wall,
            "train_cpu_seconds": train_cpu, "predict_seconds": predict_wall, "predict_cpu_seconds": predict_cpu,
            "scored_spots": int(rows.size), "masks": int(hidden.shape[0]), "variants": variants}


def _probe(model, loader) -> dict:
    """How the trained network reads its input (the ``batch_first`` question of SPEC §3), on one batch of spots:
    the largest change of a spot's prediction when its 18 neighbours are replaced by another spot's, and the mean
    change when the same spots are predicted in a batch half as large."""
    import torch

    batch = next(iter(loader))
    x = batch["pre_masked_exp"].float()
    with torch.inference_mode():
        base = model(x)[:, 0]
        swapped = x.clone()
        swapped[:, 1:] = x[torch.roll(torch.arange(len(x)), 1), 1:]
        half = len(x) // 2
        return {"probe_spots": len(x),
                "neighbours_swapped_max_change": float((model(swapped)[:, 0] - base).abs().max()),
                "half_batch_mean_change": float((model(x[:half])[:, 0] - base[:half]).abs().mean()),
                "prediction_mean_abs": float(base.abs().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--steps", type=int, nargs="+", help="step counts to time, one fit each")
    parser.add_argument("--score", type=Path, help="masks (.npz) to predict after one training")
    parser.add_argument("--out", type=Path, help="with --score: where the predictions (.npz) go")
    parser.add_argument("--max-steps", type=int, default=1000, help="with --score: training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-neighs", type=int, default=18)
    parser.add_argument("--layer", default="c_d_log1p")
    args = parser.parse_args()
    if (args.steps is None) == (args.score is None) or (args.score is not None and args.out is None):
        parser.error("give either --steps, or --score MASKS.npz with --out PRED.npz")

    import anndata as ad
    import torch

    base = _rss_mib()
    adata = ad.read_h5ad(args.data)
    adata.layers["mask"] = adata.layers["mask"].astype(bool)
    result = time_fits(adata, args) if args.steps else train_and_predict(adata, args)
    from importlib.metadata import version

    result.update(threads=torch.get_num_threads(), import_mib=base, peak_mib=_rss_mib(),
                  original=f"spared {version('spared')}", torch=torch.__version__,
                  omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
