"""Building blocks shared by the models: transformer blocks, MLP heads, spot graphs, graph convolutions, the
frozen-encoder exemplar bank, dihedral symmetries, the correlation loss and the backbone + linear-head regressor.

Pure PyTorch (no torch_geometric, einops or timm).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import nn

from spared.models.backbones import ImageEncoder, Weights, build_backbone
from spared.models.base import Batch, Predictor, ResizableBuffers, loss_weights

# ----------------------------------------------------------------------------------------------- transformers


class Attention(nn.Module):
    """Multi-head self-attention as in vit-pytorch: bias-free QKV, output projection, dropout."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dropout = dropout
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = (nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
                       if not (heads == 1 and dim_head == dim) else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, dim)`` → ``(B, N, dim)``."""
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def feed_forward(dim: int, hidden: int, dropout: float = 0.0) -> nn.Sequential:
    """Transformer MLP: Linear → GELU → Dropout → Linear → Dropout."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))


class PreNorm(nn.Module):
    """``fn(LayerNorm(x))`` (the residual is added by the caller)."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the wrapped module to the normalised input."""
        return self.fn(self.norm(x))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + Attn(LN(x))`` then ``x + FF(LN(x))``."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = PreNorm(dim, Attention(dim, heads, dim_head, dropout))
        self.ff = PreNorm(dim, feed_forward(dim, mlp_dim, dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, dim)`` → ``(B, N, dim)``."""
        x = self.attn(x) + x
        return self.ff(x) + x


def transformer(dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0
                ) -> nn.Sequential:
    """``depth`` stacked :class:`TransformerBlock`."""
    return nn.Sequential(*[TransformerBlock(dim, heads, dim_head, mlp_dim, dropout) for _ in range(depth)])


# ------------------------------------------------------------------------------------------------------ heads


def mlp(dims: list[int], act: type[nn.Module] = nn.ELU) -> nn.Sequential:
    """Linear layers ``dims[0] → … → dims[-1]`` with ``act`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def gene_head(dim: int, n_genes: int) -> nn.Sequential:
    """``LayerNorm → Linear`` expression head (HisToGene, Hist2ST, EGN)."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_genes))


class ProjectionHead(nn.Module):
    """BLEEP/CLIP projection: ``LN(Dropout(FC(GELU(P x))) + P x)``."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim)
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim)`` → ``(B, out_dim)``."""
        projected = self.projection(x)
        return self.norm(self.dropout(self.fc(F.gelu(projected))) + projected)


# ----------------------------------------------------------------------------------------------------- graphs


def lattice_edges(coords: torch.Tensor, radius: float = 2.01, hex_geometry: bool = True) -> torch.Tensor:
    """Directed edges (both directions, no self loops) between spots closer than ``radius`` on the array.

    With ``hex_geometry`` (Visium) rows are scaled by ``sqrt(3)`` so that the six lattice neighbours
    (``(0, ±2)``, ``(±1, ±1)``) are all at distance 2; the default radius keeps exactly them. For a square
    grid (legacy ST) use ``hex_geometry=False`` and radius 1.01 (4 neighbours) or 1.5 (8 neighbours).

    Returns
    -------
    ``int64 (2, E)``: ``[source, target]`` rows, on the device of ``coords``.
    """
    pts = coords.detach().cpu().double().numpy().copy()
    if hex_geometry:
        pts[:, 0] *= math.sqrt(3.0)
    pairs = cKDTree(pts).query_pairs(radius, output_type="ndarray") if len(pts) > 1 else np.zeros((0, 2))
    pairs = torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2)
    return torch.cat([pairs.T, pairs.T.flip(0)], dim=1).to(coords.device)


def knn_edges(x: torch.Tensor, k: int) -> torch.Tensor:
    """Edges from each node's ``k`` nearest nodes (Euclidean, itself excluded) to the node: ``(2, n·k)``."""
    n = x.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return torch.zeros(2, 0, dtype=torch.long, device=x.device)
    dist = torch.cdist(x, x)
    dist.fill_diagonal_(float("inf"))
    nn_idx = dist.topk(k, largest=False).indices
    return torch.stack([nn_idx.reshape(-1), torch.arange(n, device=x.device).repeat_interleave(k)])


def scatter_mean(src: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of the rows of ``src`` grouped by ``index`` into ``n`` rows (0 for empty groups)."""
    out = src.new_zeros(n, src.shape[1]).index_add_(0, index, src)
    count = torch.bincount(index, minlength=n).clamp_min(1).to(src.dtype)
    return out / count[:, None]


def scatter_softmax(score: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Softmax of ``score`` rows ``(E, C)`` over the edges sharing a target ``index`` (per channel)."""
    idx = index[:, None].expand_as(score)
    peak = score.new_full((n, score.shape[1]), float("-inf")).scatter_reduce(0, idx, score, "amax")
    ex = (score - peak[index]).exp()
    return ex / score.new_zeros(n, score.shape[1]).index_add_(0, index, ex)[index]


class SAGEConv(nn.Module):
    """GraphSAGE with mean aggregation (Hamilton et al. 2017): ``W_l mean_{j→i} x_j + W_r x_i``.

    Works on bipartite graphs: pass ``(x_src, x_dst)``.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.lin_l = nn.Linear(in_dim, out_dim)
        self.lin_r = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor], edges: torch.Tensor) -> torch.Tensor:
        """Node features after one layer; ``edges`` is ``(2, E)`` ``[source, target]``."""
        x_src, x_dst = x if isinstance(x, tuple) else (x, x)
        agg = scatter_mean(x_src[edges[0]], edges[1], x_dst.shape[0])
        return self.lin_l(agg) + self.lin_r(x_dst)


def gcn_propagate(x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Kipf & Welling propagation ``D^-1/2 (A + I) D^-1/2 x`` for directed ``edges`` ``[source, target]``."""
    n = x.shape[0]
    loops = torch.arange(n, device=x.device)
    src = torch.cat([edges[0], loops])
    dst = torch.cat([edges[1], loops])
    deg = torch.bincount(dst, minlength=n).to(x.dtype)
    norm = deg[src].rsqrt() * deg[dst].rsqrt()
    return x.new_zeros(x.shape).index_add_(0, dst, x[src] * norm[:, None])


class GCNConv(nn.Module):
    """Graph convolution (Kipf & Welling 2017): ``D^-1/2 (A + I) D^-1/2 X W + b``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """Node features after one layer."""
        return gcn_propagate(self.lin(x), edges) + self.bias


def sincos_2d(offsets: torch.Tensor, dim: int) -> torch.Tensor:
    """2-D sine/cosine positional encoding of integer offsets ``(N, 2)`` → ``(N, dim)``.

    Half the channels encode the first axis, half the second, with frequencies ``1 / 10000^(2i/d)``
    (the ``PositionalEncoding2D`` layout SEPAL uses).
    """
    half = int(math.ceil(dim / 4) * 2)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, half, 2, device=offsets.device, dtype=torch.float32) / half))
    parts = []
    for axis in range(2):
        angle = offsets[:, axis, None].float() * inv_freq
        parts.append(torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1))
    return torch.cat(parts, dim=1)[:, :dim]


@dataclass(frozen=True)
class LocalGraphs:
    """Every spot's ``n_hops`` neighbourhood as its own small graph (SEPAL), for a whole collection.

    Graph ``g`` is the neighbourhood of spot ``g``: its nodes are ``spot_of[graph_ptr[g]:graph_ptr[g + 1]]`` (the
    centre first, then the other spots within ``n_hops`` in index order) and its edges are
    ``edges[:, edge_ptr[g]:edge_ptr[g + 1]]`` in node numbering, joining every two of its nodes that lie within
    ``n_hops`` of each other (both directions), as the authors' ``A + A² + …`` neighbourhood matrix does.
    """

    spot_of: np.ndarray
    graph_ptr: np.ndarray
    edges: np.ndarray
    edge_ptr: np.ndarray

    @property
    def n_graphs(self) -> int:
        return int(self.graph_ptr.size - 1)

    def select(self, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The graphs of ``centres`` as one disjoint union renumbered from 0.

        Returns
        -------
        ``spots`` ``(M,)`` spot of each node; ``graph`` ``(M,)`` position in ``centres`` of its graph; ``edges``
        ``(2, E)`` in the new node numbering; ``centre`` ``(len(centres),)`` node index of each centre.
        """
        centres = np.asarray(centres, dtype=np.int64)
        nodes, graph, first = _ranges(self.graph_ptr[centres], self.graph_ptr[centres + 1])
        edge_ids, edge_graph, _ = _ranges(self.edge_ptr[centres], self.edge_ptr[centres + 1])
        shift = first - self.graph_ptr[centres]
        edges = self.edges[:, edge_ids] + shift[edge_graph]
        return self.spot_of[nodes], graph, edges, first


def _ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated ``arange(start, end)`` ranges, the range each item belongs to and each range's offset."""
    sizes = ends - starts
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    owner = np.repeat(np.arange(sizes.size), sizes)
    return starts[owner] + np.arange(int(sizes.sum())) - first[owner], owner, first


def local_subgraphs(edges: np.ndarray | torch.Tensor, n: int, n_hops: int) -> LocalGraphs:
    """The :class:`LocalGraphs` of ``n`` spots joined by ``edges`` (``(2, E)``, treated as undirected)."""
    from spared.graph import khop_neighborhoods

    e = edges.detach().cpu().numpy() if isinstance(edges, torch.Tensor) else np.asarray(edges)
    adj = sp.csr_matrix((np.ones(e.shape[1], dtype=bool), (e[0], e[1])), shape=(n, n))
    reach = khop_neighborhoods(adj, n_hops)[-1].tocsr()
    linked = (reach - sp.identity(n, dtype=bool, format="csr")).astype(bool).tocsr()
    linked.eliminate_zeros()
    coo = reach.tocoo()
    g, u = coo.row.astype(np.int64), coo.col.astype(np.int64)
    order = np.lexsort((u, u != g, g))  # by graph, centre first, then spot index
    g, u = g[order], u[order]
    graph_ptr = np.searchsorted(g, np.arange(n + 1)).astype(np.int64)
    # candidate edges: every node u of graph g with each of u's within-n_hops spots v; kept when v is in graph g
    counts = np.diff(linked.indptr)[u]
    rep = np.repeat(np.arange(u.size), counts)
    v = linked.indices[np.repeat(linked.indptr[u], counts) + np.arange(int(counts.sum())) -
                       np.repeat(np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)].astype(np.int64)
    key = g * n + u
    target = g[rep] * n + v
    key_sorted = np.argsort(key, kind="stable")
    pos = np.clip(np.searchsorted(key[key_sorted], target), 0, key.size - 1)
    inside = key[key_sorted][pos] == target
    local = np.stack([rep[inside], key_sorted[pos[inside]]]).astype(np.int64)
    edge_ptr = np.searchsorted(g[local[0]], np.arange(n + 1)).astype(np.int64)
    return LocalGraphs(spot_of=u, graph_ptr=graph_ptr, edges=local, edge_ptr=edge_ptr)


# ---------------------------------------------------------------------------------------------- exemplar bank


class ExemplarBank(ResizableBuffers):
    """Frozen image encoder plus the training spots' encoder features, expressions, slides and indices.

    Used by EGN and EGGN: exemplars of a spot are its ``k`` nearest training spots in the frozen feature
    space (Euclidean), taken from *other* training slides when the bank spans several slides (the authors'
    protocol), otherwise from any other training spot; a spot is never its own exemplar.
    """

    _resizable = ("feats", "exprs", "slides", "indices")
    _chunk = 1024  # queries per distance block (bounds memory on whole-slide batches)

    def __init__(self, encoder: ImageEncoder, n_genes: int) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()
        self.register_buffer("feats", torch.zeros(0, encoder.out_dim))
        self.register_buffer("exprs", torch.zeros(0, n_genes))
        self.register_buffer("slides", torch.zeros(0, dtype=torch.long))
        self.register_buffer("indices", torch.zeros(0, dtype=torch.long))
        self._parts: list[tuple[torch.Tensor, ...]] = []

    def train(self, mode: bool = True) -> ExemplarBank:
        """Keep the frozen encoder in evaluation mode whatever the model's mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    @property
    def size(self) -> int:
        """Number of training spots in the bank."""
        return self.feats.shape[0]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen features ``(B, D)`` of ``images`` (no gradient)."""
        with torch.no_grad():
            return self.encoder(images)

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        """Add one training batch (during ``prepare``)."""
        self._parts.append((self.encode(batch["image"]), torch.nan_to_num(batch["target"].float()),
                            batch["slide"].long(), batch["index"].long()))

    def finish(self) -> None:
        """Stack the added batches into the bank buffers."""
        feats, exprs, slides, indices = (torch.cat(p) for p in zip(*self._parts, strict=True))
        self.feats, self.exprs, self.slides, self.indices = feats, exprs, slides, indices
        self._parts = []

    def nearest(self, feats: torch.Tensor, slides: torch.Tensor, indices: torch.Tensor, k: int) -> torch.Tensor:
        """Bank rows ``(B, k)`` of the ``k`` exemplars of each query (nearest first)."""
        if self.size == 0:
            raise RuntimeError("the exemplar bank is empty: call model.prepare(train_batches) first")
        by_slide = torch.unique(self.slides).numel() > 1
        out = []
        for start in range(0, feats.shape[0], self._chunk):
            stop = start + self._chunk
            if by_slide:
                excluded = slides[start:stop].long()[:, None] == self.slides[None, :]
            else:
                excluded = indices[start:stop].long()[:, None] == self.indices[None, :]
            available = int((~excluded).sum(1).min())
            if available < k:
                raise ValueError(f"only {available} exemplars are available for some spot but k={k} were "
                                 f"requested")
            dist = torch.cdist(feats[start:stop].float(), self.feats).masked_fill(excluded, float("inf"))
            out.append(dist.topk(k, largest=False).indices)
        return torch.cat(out)


# ---------------------------------------------------------------------------------------- dihedral symmetries

#: The 8 symmetries of a square patch (the dihedral group D4): rotation by ``k·90°`` then an optional flip.
DIHEDRAL = tuple((k, flip) for flip in (False, True) for k in range(4))


def dihedral(images: torch.Tensor, element: int) -> torch.Tensor:
    """Images ``(..., H, W)`` under symmetry ``element`` of :data:`DIHEDRAL` (0 is the identity)."""
    k, flip = DIHEDRAL[element]
    out = images.rot90(k, dims=(-2, -1)) if k else images
    return out.flip(-1) if flip else out


def random_dihedral(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """An independent uniformly random symmetry of :data:`DIHEDRAL` applied to each image ``(B, C, H, W)``.

    Uniform over D4 is what random horizontal flip, vertical flip and 90° rotation, each with probability 1/2,
    give (ST-Net, SpaRED, BLEEP).
    """
    choice = torch.randint(0, len(DIHEDRAL), (images.shape[0],), generator=generator)
    out = images.clone()
    for element in range(1, len(DIHEDRAL)):
        sel = (choice == element).nonzero().flatten().to(images.device)
        if sel.numel():
            out[sel] = dihedral(images[sel], element)
    return out


def masked_pcc_loss(pred: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``1 − mean_g r_g``: Pearson correlation of each gene over its loss entries (EGN/EGGN's correlation term),
    weighted by ``"loss_weight"`` when present (weighted means, covariance and variances).

    As in the authors' code a gene's correlation uses ``+1e-8`` in the denominator and counts as ``−1`` when
    undefined; genes with fewer than two loss entries are left out (0 when no gene has two).
    """
    weight = loss_weights(batch, pred.dtype)
    target = torch.nan_to_num(batch["target"].to(pred.dtype))
    keep = (weight > 0).sum(0) >= 2
    if not bool(keep.any()):
        return pred.sum() * 0.0
    n = weight.sum(0).clamp_min(torch.finfo(pred.dtype).tiny)
    dp = pred - (pred * weight).sum(0) / n
    dt = target - (target * weight).sum(0) / n
    cov, var_p, var_t = ((weight * a * b).sum(0) for a, b in ((dp, dt), (dp, dp), (dt, dt)))
    r = cov / ((var_p.sqrt() * var_t.sqrt()) + 1e-8)
    r = torch.nan_to_num(r, nan=-1.0)
    return 1.0 - r[keep].mean()


# ------------------------------------------------------------------------------------------ patch regressors


def exemplar_loss_weight(model: str, value: float | None) -> float:
    """The correlation-loss weight of EGN/EGGN: ``value``, or the recipe's ``pcc`` term when ``None``."""
    from spared.models.recipe import recipe

    weight = recipe(model).loss_weight("pcc") if value is None else float(value)
    if weight < 0:
        raise ValueError(f"{model}: pcc_weight must be >= 0, got {weight}")
    return weight


class ExemplarPredictor(Predictor):
    """A predictor whose :meth:`prepare` fills ``self.bank`` (an :class:`ExemplarBank`) from the train split."""

    bank: ExemplarBank

    def prepare_step(self, batch: Batch) -> None:
        """Add the batch to the exemplar bank."""
        super().prepare_step(batch)
        self.bank.add(batch)

    def prepare_end(self) -> None:
        """Finish the exemplar bank."""
        super().prepare_end()
        self.bank.finish()


class BackboneRegressor(Predictor):
    """A torchvision backbone and a linear expression head, trained end to end on independent patches.

    Subclasses set :attr:`arch` (and :attr:`predicts_deltas`); ST-Net, ShuffleNet, ViT-B and ViT-B+Δ are this.

    Head initialisation (``head_init``, default: the model's recipe)
        ``"default"``: PyTorch's initialisation of a fresh ``nn.Linear``, as SpaRED's and SEPAL's image encoders
        (ShuffleNet, ViT-B, ViT-B+Δ). An absolute model then starts near 0 and must learn the expression level
        (ViT-B); a delta model starts near the train means because it regresses deltas (ViT-B+Δ): that is the
        contrast the benchmark reports. ``"train_mean"``: weight 0 and bias = train-split gene means, as ST-Net's
        code does, so training starts at the train-mean baseline.

    Parameters
    ----------
    n_genes
        Genes predicted.
    backbone_weights, weights_dir
        ``"imagenet"`` (default), ``"none"`` or a local weights file; folder searched first for the ImageNet file
        (see :func:`~spared.models.backbones.build_backbone`).
    backbone_kwargs
        Architecture overrides (tiny test networks).
    head_init
        ``"default"`` or ``"train_mean"`` (``None``: the recipe's).
    """

    input_kind = "patch"
    arch: str = ""

    def __init__(self, n_genes: int, backbone_weights: Weights = "imagenet", weights_dir: str | None = None,
                 backbone_kwargs: dict | None = None, head_init: str | None = None) -> None:
        super().__init__(n_genes)
        from spared.models.recipe import HEAD_INITS, recipe

        self.head_init = recipe(self.name).head_init if head_init is None else head_init
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"{self.name}: head_init must be one of {list(HEAD_INITS)}, got {self.head_init!r}")
        self.encoder = build_backbone(self.arch, backbone_weights, weights_dir, **(backbone_kwargs or {}))
        self.head = nn.Linear(self.encoder.out_dim, n_genes)

    @property
    def requires_prepare(self) -> bool:
        """Delta models need the train means; ``"train_mean"`` heads start at them."""
        return self.predicts_deltas or self.head_init == "train_mean"

    def forward(self, batch: Batch) -> torch.Tensor:
        """Absolute predictions ``(B, G)`` (the train means are added for delta models)."""
        self.check_prepared()
        out = self.head(self.encoder(batch["image"]))
        return self.add_mean(out) if self.predicts_deltas else out

    def prepare_end(self) -> None:
        """Store the train means; a ``"train_mean"`` head starts at them (weight 0, bias = means)."""
        super().prepare_end()
        if self.head_init == "train_mean":
            with torch.no_grad():
                self.head.weight.zero_()
                self.head.bias.copy_(self.gene_mean)
