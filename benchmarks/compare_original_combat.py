"""ComBat side by side: ours, the ``combat`` package the original SpaRED library calls, and inmoose's maintained port.

The original library batch-corrects ``log1p`` and ``d_log1p`` with ``combat.pycombat.pycombat`` (PyPI ``combat``
0.3.3, parametric priors). That package's iterative solver has a bug: when it updates each batch's multiplicative
effect (``delta*``) it subtracts the **first gene's** additive effect (``gamma*``) from every gene's standardised
values, instead of each gene's own, so every gene's scale correction is estimated around the wrong centre. sva (R)
and the maintained port ``inmoose.pycombat.pycombat_norm`` use each gene's own effect; so does spared
(:mod:`spared.pp.combat`), which matches inmoose. This script measures what the bug changes on processed
collections: for each, the ``log1p`` and ``d_log1p`` layers are corrected by the three implementations with the
collection's batches (``combat_key`` of its processing settings) and the differences are printed.

    python benchmarks/compare_original_combat.py A.h5ad [B.h5ad ...] [--orig-python /work/orig-venv/bin/python]

The side environment needs ``pip install combat==0.3.3`` (the original library imports it at import time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np

from spared.data_model import dense
from spared.pp.combat import combat_apply, combat_fit

# Run by the side environment's interpreter: the ``combat`` package on (genes x spots) frames, as the original calls
# it; then again with its solver called on one gene at a time, which is the same solver with the first gene's effect
# being each gene's own (so what remains of the difference is not the bug).
PACKAGE_DRIVER = r"""
import sys, numpy as np, pandas as pd
import combat.pycombat as package
data = np.load(sys.argv[1], allow_pickle=False)
batches = data["batches"].tolist()
solver = package.it_sol

def gene_by_gene(sdat, g_hat, d_hat, *priors, **options):
    parts = [solver(sdat[g:g + 1], g_hat[:, g:g + 1], d_hat[g:g + 1], *priors, **options) for g in range(len(sdat))]
    gamma = np.concatenate([np.ravel(p[0]) for p in parts])[None, :]
    return np.asarray([gamma, np.concatenate([np.ravel(p[1]) for p in parts])], dtype=object)

out = {}
for variant, it_sol in (("as is", solver), ("gene by gene", gene_by_gene)):
    package.it_sol = it_sol
    for layer in ("log1p", "d_log1p"):
        frame = pd.DataFrame(data[layer].T)
        out[f"{layer}|{variant}"] = package.pycombat(frame, batches, par_prior=True).to_numpy().T
np.savez(sys.argv[2], **out)
"""


def ours(values: np.ndarray, batches: np.ndarray) -> np.ndarray:
    return combat_apply(values, batches, combat_fit(values, batches))


def inmoose(values: np.ndarray, batches: np.ndarray) -> np.ndarray | None:
    try:
        from inmoose.pycombat import pycombat_norm
    except ImportError:
        return None
    return np.asarray(pycombat_norm(values.T, batches)).T


def package(layers: dict[str, np.ndarray], batches: np.ndarray, python: str, workdir: Path) -> dict[str, np.ndarray]:
    src, dst = workdir / "input.npz", workdir / "output.npz"
    np.savez(src, batches=batches.astype(str), **layers)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([python, "-c", PACKAGE_DRIVER, str(src), str(dst)], capture_output=True, text=True,
                          env=env, cwd=workdir)
    if done.returncode != 0:
        raise RuntimeError(f"the combat package failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    with np.load(dst) as saved:
        return {k: saved[k] for k in saved.files}


def describe(a: np.ndarray, b: np.ndarray) -> str:
    gap = np.abs(a - b)
    genes = (gap > 1e-3).any(axis=0).sum()
    return (f"max |Δ| {gap.max():.3g}, mean |Δ| {gap.mean():.3g}, entries > 1e-3 apart {np.mean(gap > 1e-3):.1%}, "
            f"genes with such an entry {genes} of {a.shape[1]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="+", type=Path, help="processed collections (.h5ad)")
    parser.add_argument("--orig-python",
                        default=os.environ.get("SPARED_ORIGINAL_PYTHON", "/work/orig-venv/bin/python"),
                        help="interpreter of the side environment with the combat package")
    args = parser.parse_args()
    if not Path(args.orig_python).is_file():
        parser.error(f"--orig-python {args.orig_python} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.data:
            adata = ad.read_h5ad(path)
            key = json.loads(adata.uns["spared"]["config"]).get("combat_key")
            if key is None or adata.obs[key].nunique() < 2:
                print(f"== {path.name}: no ComBat (combat_key {key!r})")
                continue
            batches = adata.obs[key].astype(str).to_numpy()
            layers = {name: dense(adata.layers[name]).astype(np.float64) for name in ("log1p", "d_log1p")}
            theirs = package(layers, batches, args.orig_python, Path(tmp))
            print(f"== {path.name}: {adata.n_obs} spots x {adata.n_vars} genes, {len(set(batches))} batches "
                  f"({key}), preset {adata.uns['spared'].get('preset', 'n/a')}")
            for name, values in layers.items():
                mine = ours(values, batches)
                stored = dense(adata.layers[f"c_{name}"])
                print(f"   {name}: ours vs the stored c_{name}: max |Δ| {np.abs(mine - stored).max():.2g}")
                reference = inmoose(values, batches)
                if reference is not None:
                    print(f"   {name}: ours vs inmoose pycombat_norm: {describe(mine, reference)}")
                print(f"   {name}: ours vs combat 0.3.3 (the original's): {describe(mine, theirs[name + '|as is'])}")
                print(f"   {name}: ours vs combat 0.3.3 with its solver run gene by gene: "
                      f"{describe(mine, theirs[name + '|gene by gene'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
