"""Time the original library's SpaCKLE (``spared`` 2.2.1) training on a processed collection; prints one JSON line.

Run by ``bench_spackle.py`` with the Python of a separate virtual environment where ``spared==2.2.1`` is
installed (never imported by this project). It builds the original ``ImputationDataset`` and
``GeneImputationModel`` with their default arguments except the ones matched to ours (batch size,
neighbours, layer) and trains them with a Lightning ``Trainer`` on CPU (the original's own ``train_spackle``
hard-codes a GPU). Validation runs once, at the last step, so that the time measured is training steps.

One fix is needed on real tissue: the original reads a spot's neighbours from *column* ``idx`` of squidpy's
k-nearest-neighbour connectivity matrix (the spots that count it among their k nearest), whose size varies
on irregular tissue, so batching fails ("stack expects each tensor to be equal size"). The dataset below
transposes that dense matrix after the original builds it, so each spot reads exactly its k nearest spots;
the work per item (a scan of one dense column) is unchanged.

Usage::

    /path/to/original/venv/bin/python benchmarks/spackle_original.py DATA.h5ad --steps 20 40
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--steps", type=int, nargs="+", required=True, help="step counts to time, one fit each")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-neighs", type=int, default=18)
    parser.add_argument("--layer", default="c_d_log1p")
    args = parser.parse_args()

    import anndata as ad
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

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

    base = _rss_mib()
    adata = ad.read_h5ad(args.data)
    adata.layers["mask"] = adata.layers["mask"].astype(bool)
    train, val = adata[adata.obs["split"] == "train"], adata[adata.obs["split"] == "val"]
    if val.n_obs == 0:
        val = adata[adata.obs["split"] == "test"]
    results = {"threads": torch.get_num_threads(), "fits": []}
    for steps in args.steps:
        settings = get_args_dict({"batch_size": args.batch_size, "num_neighs": args.num_neighs,
                                  "val_check_interval": steps})
        L.seed_everything(0, verbose=False)
        start = time.perf_counter()
        train_data = KNearestDataset(train, settings, "train", args.layer)
        val_data = KNearestDataset(val, settings, "val", args.layer)
        probs = get_mask_prob_tensor(settings["masking_method"], adata, settings["mask_prob"],
                                     settings["scale_factor"])
        model = GeneImputationModel(args=settings, data_input_size=adata.n_vars, lr=1e-3, optimizer="Adam",
                                    train_mask_prob_tensor=probs, val_test_mask_prob_tensor=probs)
        trainer = L.Trainer(max_steps=steps, val_check_interval=steps, check_val_every_n_epoch=None,
                            accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(model, DataLoader(train_data, batch_size=args.batch_size, shuffle=True, drop_last=True),
                    DataLoader(val_data, batch_size=args.batch_size, drop_last=True))
        results["fits"].append({"steps": steps, "seconds": time.perf_counter() - start})
    results.update(import_mib=base, peak_mib=_rss_mib())
    print(json.dumps(results))


if __name__ == "__main__":
    main()
