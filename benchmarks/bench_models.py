"""Training throughput (patches/s) of every prediction model on CPU, full-size default configurations.

A step is ``model.loss(batch)`` + backward + Adam step on random patches; patch models get batches of
independent patches, slide models one contiguous hexagonal patch of a slide with the same number of spots,
exemplar/retrieval models a bank built from two random training slides first (not timed). The table gives
seconds per step and patches per second after ``--warmup`` untimed steps (mean of ``--steps`` timed steps).

    python benchmarks/bench_models.py [--models stnet,sepal] [--sizes 224,64] [--batch 224:16,64:32]
                                      [--warmup 1] [--steps 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from spared.models import MODEL_NAMES, build_model

N_GENES = 128


def slide_batch(n: int, px: int, slide: int, start: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """``n`` spots of one slide on a near-square Visium lattice, random patches and targets."""
    side = int(np.ceil(np.sqrt(n)))
    r, c = np.divmod(np.arange(n), side)
    coords = torch.as_tensor(np.column_stack([r, 2 * c + (r % 2)]))
    return {"image": torch.randn(n, 3, px, px, generator=gen), "target": torch.randn(n, N_GENES, generator=gen),
            "mask": torch.rand(n, N_GENES, generator=gen) > 0.3, "coords": coords,
            "slide": torch.full((n,), slide), "index": torch.arange(start, start + n)}


def bench(name: str, px: int, batch_size: int, warmup: int, steps: int) -> tuple[float, float]:
    """Parameters (millions) and mean seconds per training step."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model(name, N_GENES)
    if model.requires_prepare:
        model.prepare([slide_batch(batch_size, px, s, s * batch_size, gen) for s in (1, 2)])
    batch = slide_batch(batch_size, px, 0, 10_000, gen)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return sum(p.numel() for p in model.parameters()) / 1e6, float(np.mean(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    parser.add_argument("--sizes", default="224,64")
    parser.add_argument("--batch", default="224:16,64:32", help="batch size per patch size, px:batch")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = {int(k): int(v) for k, v in (item.split(":") for item in args.batch.split(","))}
    print(f"torch {torch.__version__}, {args.threads} threads, {N_GENES} genes, warm-up {args.warmup}, "
          f"timed steps {args.steps}")
    print(f"{'model':<12} {'px':>4} {'batch':>5} {'params (M)':>10} {'s/step':>8} {'patches/s':>10}")
    for px in (int(s) for s in args.sizes.split(",")):
        for name in args.models.split(","):
            b = batches.get(px, 16)
            params, sec = bench(name, px, b, args.warmup, args.steps)
            print(f"{name:<12} {px:>4} {b:>5} {params:>10.1f} {sec:>8.2f} {b / sec:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
