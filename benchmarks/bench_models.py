"""Training throughput and peak memory of every model at its recipe's batch size (full-size architectures).

Each measurement runs in its own process: build the model (random weights: the numbers do not depend on them),
let it see two random training slides when it needs to (exemplar bank, gene means; not timed), then time
``--steps`` training steps (``model.loss`` + backward + the recipe's optimiser) after ``--warmup`` untimed ones on
random 224-px patches. A batch has the recipe's size: independent patches for patch/exemplar/retrieval models, one
contiguous window of a Visium lattice for slide models, and for SEPAL's second stage 256 local graphs of 768-d
stage-1 embeddings (stage 1 is the ``vit_b_delta`` row). Peak memory is the process's peak resident set size
(``ru_maxrss``) on CPU and ``torch.cuda.max_memory_allocated`` on a GPU; ``model MiB`` is the resident size (on
a GPU: the allocated GPU memory) after building the model, so ``peak − model`` is what training adds. A model that
fails (out of memory, say) is named and the script exits 1 after measuring the others.

When a recipe batch does not fit ``--max-batch`` (CPU memory), the model is measured at ``max-batch/2`` and
``max-batch`` and its peak memory at the recipe batch is extrapolated linearly (marked ``~``); throughput is the
one measured at ``max-batch``. SEPAL's stage 2 must stay within 8 GiB at its defaults (checked: the script
exits 1 when it does not).

    python benchmarks/bench_models.py [--models stnet,sepal] [--max-batch 64] [--warmup 1] [--steps 2]
                                      [--threads 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from spared.models import MODEL_INFO, TRAINED_MODELS, build_model
from spared.models.recipe import recipe

N_GENES = 128
PX = 224
SEPAL_LIMIT_GIB = 8.0


def lattice_batch(n: int, slide: int, start: int, gen: torch.Generator, images: bool = True
                  ) -> dict[str, torch.Tensor]:
    """``n`` spots of one slide on a near-square Visium lattice with random patches, targets and counts."""
    side = int(np.ceil(np.sqrt(n)))
    r, c = np.divmod(np.arange(n), side)
    batch = {"target": torch.randn(n, N_GENES, generator=gen), "mask": torch.rand(n, N_GENES, generator=gen) > 0.3,
             "coords": torch.as_tensor(np.column_stack([r, 2 * c + (r % 2)])), "slide": torch.full((n,), slide),
             "index": torch.arange(start, start + n),
             "counts": torch.poisson(torch.full((n, N_GENES), 3.0), generator=gen), "size_factor": torch.ones(n)}
    if images:
        batch["image"] = torch.randn(n, 3, PX, PX, generator=gen)
    return batch


def graph_batch(n: int, dim: int, n_hops: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """SEPAL stage-2 batch: the local graphs of ``n`` spots of a lattice slide with random embeddings."""
    from spared.models.layers import lattice_edges, local_subgraphs

    base = lattice_batch(n, 0, 0, gen, images=False)
    spots, owner, edges, _ = local_subgraphs(lattice_edges(base["coords"]), n, n_hops).select(np.arange(n))
    return {**base, "embedding": torch.randn(len(spots), dim, generator=gen),
            "offset": base["coords"][spots] - base["coords"][owner], "graph": torch.as_tensor(owner),
            "edges": torch.as_tensor(edges), "stage1": torch.randn(n, N_GENES, generator=gen)}


def rss_mib() -> float:
    """Peak resident set size of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, batch_size: int, warmup: int, steps: int, device: str) -> dict[str, float]:
    """Seconds per step and peak memory of ``steps`` training steps of ``name`` at ``batch_size`` (this process)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    rec = recipe(name)
    model = build_model(name, N_GENES, backbone_weights="none").to(device)
    kind = MODEL_INFO[name].input_kind
    if kind == "graph":
        make = lambda slide, start: graph_batch(batch_size, model.embedding_dim, model.n_hops, gen)  # noqa: E731
    else:
        make = lambda slide, start: lattice_batch(batch_size, slide, start, gen)  # noqa: E731
    if model.requires_prepare:
        model.prepare([make(s, s * batch_size) for s in (1, 2)])
    model_mib = torch.cuda.memory_allocated() / 2**20 if device == "cuda" else rss_mib()
    batch = {k: v.to(device) for k, v in make(0, 10 * batch_size).items()}
    params = [p for p in model.parameters() if p.requires_grad]
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[rec.optimizer]
    extra = {"momentum": rec.momentum} if rec.optimizer == "sgd" else {}
    opt = cls(params, lr=rec.lr, weight_decay=rec.weight_decay, **extra)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    times = []
    for step in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else rss_mib()
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "sec": float(np.mean(times)),
            "peak_mib": peak, "model_mib": model_mib}


def run_child(name: str, batch: int, args: argparse.Namespace) -> dict[str, float]:
    """:func:`measure` in a fresh process (so that its peak memory is its own)."""
    cmd = [sys.executable, __file__, "--child", f"{name}:{batch}", "--warmup", str(args.warmup), "--steps",
           str(args.steps), "--threads", str(args.threads), "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{name} at batch {batch} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(TRAINED_MODELS))
    parser.add_argument("--max-batch", type=int, default=None,
                        help="largest batch measured on this machine (larger recipe batches are extrapolated)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        name, batch = args.child.split(":")
        print(json.dumps(measure(name, int(batch), args.warmup, args.steps, args.device)))
        return
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"torch {torch.__version__}, {where}, {N_GENES} genes, {PX}-px patches, warm-up {args.warmup}, "
          f"timed steps {args.steps}")
    print(f"{'model':<12} {'kind':<9} {'recipe batch':>12} {'measured':>8} {'params (M)':>10} {'s/step':>8} "
          f"{'spots/s':>8} {'model MiB':>9} {'peak MiB':>9}")
    over, failed = [], []
    for name in args.models.split(","):
        recipe_batch = recipe(name).batch_size
        try:
            if args.max_batch and recipe_batch > args.max_batch:
                lo, hi = run_child(name, args.max_batch // 2, args), run_child(name, args.max_batch, args)
                slope = (hi["peak_mib"] - lo["peak_mib"]) / (args.max_batch - args.max_batch // 2)
                peak = f"~{hi['peak_mib'] + slope * (recipe_batch - args.max_batch):.0f}"
                res, measured = hi, args.max_batch
            else:
                res, measured = run_child(name, recipe_batch, args), recipe_batch
                peak = f"{res['peak_mib']:.0f}"
        except RuntimeError as err:  # out of memory, say: name it, go on with the others, exit 1 at the end
            failed.append(name)
            print(f"{name:<12} FAILED: {str(err).strip().splitlines()[-1][:200]}", flush=True)
            continue
        print(f"{name:<12} {MODEL_INFO[name].input_kind:<9} {recipe_batch:>12} {measured:>8} {res['params_m']:>10.1f} "
              f"{res['sec']:>8.2f} {measured / res['sec']:>8.1f} {res['model_mib']:>9.0f} {peak:>9}", flush=True)
        if name == "sepal":
            gib = float(peak.lstrip("~")) / 1024
            verdict = "within" if gib <= SEPAL_LIMIT_GIB else "OVER"
            print(f"  SEPAL stage 2 peak {gib:.2f} GiB: {verdict} the {SEPAL_LIMIT_GIB:.0f} GiB budget")
            if gib > SEPAL_LIMIT_GIB:
                over.append(name)
    if over or failed:
        sys.exit(f"over the memory budget: {', '.join(over) or 'none'}; failed: {', '.join(failed) or 'none'}")


if __name__ == "__main__":
    main()
