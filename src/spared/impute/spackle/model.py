"""The SpaCKLE network and the trained-model object returned by :func:`spared.impute.spackle.fit`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spared.impute.spackle.config import SpackleConfig


class SpackleNetwork(nn.Module):
    """Linear(G → d) → TransformerEncoder → Linear(d → G), read out at row 0 (the spot being completed).

    The input is a ``(B, 1 + k, G)`` batch: the spot, then its ``k`` same-slide neighbours, with hidden or
    missing entries set to 0. With ``visual_dim`` set, the spot's patch embedding ``(B, visual_dim)`` is
    projected to ``G`` values and appended as one extra token, which then goes through the same input
    projection as the expression rows (the expression tokens are unchanged; attention mixes them).
    No positional encoding: the neighbours form a set; row 0 differs from them as the read-out row.
    With ``observed_indicator`` each row is ``[values, observed flags]`` (``2G`` wide), so a missing entry
    (0, flag 0) is distinguishable from a measured value; the visual token's flags are all 1.
    With ``relative_positions`` a small MLP of each row's distance to the spot (0 for the spot itself, in
    spot spacings) is added to the row's token, which tells the spot from its neighbours and near from far.
    With ``depth_input`` each row also carries its spot's standardised log sequencing depth (one more input
    column; the visual token's is 0).
    Values are standardised per gene (train-split statistics, :meth:`init_scaling`) on the way in and out.
    The last encoder layer is evaluated for row 0 only (identical result, about a quarter less work).
    """

    def __init__(self, n_genes: int, d_model: int, num_layers: int = 2, num_heads: int = 1,
                 ff_dim: int | None = None, dropout: float = 0.1, visual_dim: int | None = None,
                 observed_indicator: bool = False, relative_positions: bool = False,
                 depth_input: bool = False) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"the transformer width ({d_model}) must be a multiple of num_heads ({num_heads}); "
                             f"set SpackleConfig(d_model=...) or num_heads accordingly")
        self.n_genes = n_genes
        self.visual_dim = visual_dim
        self.observed_indicator = observed_indicator
        self.depth_input = depth_input
        self.embed = nn.Linear((2 * n_genes if observed_indicator else n_genes) + int(depth_input), d_model)
        self.visual = nn.Linear(visual_dim, n_genes) if visual_dim else None
        self.relative_positions = relative_positions
        self.distance = (nn.Sequential(nn.Linear(1, d_model), nn.GELU(), nn.Linear(d_model, d_model))
                         if relative_positions else None)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, ff_dim or 4 * d_model, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, n_genes)
        self.register_buffer("gene_mean", torch.zeros(n_genes))
        self.register_buffer("gene_scale", torch.ones(n_genes))
        if depth_input:
            self.register_buffer("depth_mean", torch.zeros(()))
            self.register_buffer("depth_scale", torch.ones(()))

    @classmethod
    def from_config(cls, config: SpackleConfig, n_genes: int, visual_dim: int | None = None) -> SpackleNetwork:
        return cls(n_genes, config.width(n_genes), config.num_layers, config.num_heads,
                   config.feedforward_width(n_genes), config.dropout, visual_dim, config.observed_indicator,
                   config.relative_positions, config.depth_key is not None)

    def init_scaling(self, gene_means: np.ndarray, gene_scales: np.ndarray) -> None:
        """Set the per-gene standardisation (train-split mean and standard deviation of the real values).

        The network reads and predicts standardised values (``(x − mean) / scale``): log-expression sits far
        from 0 (e.g. 5–15 for log2 TPM) with gene-specific offsets, and Adam moving each parameter by about
        ``lr`` per step would otherwise spend thousands of steps learning those offsets.
        """
        with torch.no_grad():
            self.gene_mean.copy_(torch.as_tensor(gene_means, dtype=self.gene_mean.dtype))
            self.gene_scale.copy_(torch.as_tensor(gene_scales, dtype=self.gene_scale.dtype).clamp_min(1e-3))

    def init_depth_scaling(self, mean: float, scale: float) -> None:
        """Set the standardisation of the log depth input (train-split mean and standard deviation)."""
        with torch.no_grad():
            self.depth_mean.fill_(float(mean))
            self.depth_scale.fill_(max(float(scale), 1e-3))

    def forward(self, x: torch.Tensor, visual: torch.Tensor | None = None,
                observed: torch.Tensor | None = None, distance: torch.Tensor | None = None,
                depth: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted ``(B, G)`` expression of row 0 of each ``(1 + k, G)`` neighbourhood.

        ``observed`` (``(B, 1 + k, G)`` bool, True = a known value) is required with ``observed_indicator``,
        ``distance`` (``(B, 1 + k)``) with ``relative_positions``, ``depth`` (``(B, 1 + k)`` log counts outside
        the panel) with ``depth_input``.
        """
        if self.observed_indicator and observed is None:
            raise ValueError("this SpaCKLE model reads observed/missing flags; pass them as `observed`")
        if self.distance is not None and distance is None:
            raise ValueError("this SpaCKLE model reads neighbour distances; pass them as `distance`")
        if self.depth_input and depth is None:
            raise ValueError("this SpaCKLE model reads each spot's sequencing depth; pass it as `depth`")
        x = (x - self.gene_mean) / self.gene_scale
        if observed is not None:
            x = x.masked_fill(~observed, 0.0)
        if self.visual is not None:
            if visual is None:
                raise ValueError("this SpaCKLE model was trained with patch embeddings; pass them as `visual`")
            x = torch.cat([x, self.visual(visual).unsqueeze(1)], dim=1)
            if observed is not None:
                observed = torch.cat([observed, observed.new_ones(observed[:, :1].shape)], dim=1)
        if self.observed_indicator:
            x = torch.cat([x, observed.to(x.dtype)], dim=-1)
        if self.depth_input:
            z = ((depth.to(x.dtype) - self.depth_mean) / self.depth_scale).unsqueeze(-1)
            if z.shape[1] < x.shape[1]:  # the visual token: depth at the mean
                z = torch.cat([z, z.new_zeros(z[:, :1].shape)], dim=1)
            x = torch.cat([x, z], dim=-1)
        h = self.embed(x)
        if self.distance is not None:
            position = self.distance(distance.unsqueeze(-1).to(h.dtype))
            h = h + (position if h.shape[1] == position.shape[1] else torch.cat(
                [position, position.new_zeros(position[:, :1].shape)], dim=1))
        *first, last = self.encoder.layers
        for layer in first:
            h = layer(h)
        return self.head(_row0_layer(last, h)) * self.gene_scale + self.gene_mean


class SpackleEnsemble(nn.Module):
    """Several :class:`SpackleNetwork` members behind the same ``forward``: the mean of their predictions."""

    def __init__(self, members: list[SpackleNetwork]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member network")
        self.members = nn.ModuleList(members)

    @property
    def n_genes(self) -> int:
        return self.members[0].n_genes

    @property
    def visual_dim(self) -> int | None:
        return self.members[0].visual_dim

    def forward(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        """Mean of the members' ``(B, G)`` predictions (same arguments as :meth:`SpackleNetwork.forward`)."""
        return torch.stack([member(*inputs) for member in self.members]).mean(dim=0)


def network_from_config(config: SpackleConfig, n_genes: int,
                        visual_dim: int | None = None) -> SpackleNetwork | SpackleEnsemble:
    """The untrained network ``config`` describes: one :class:`SpackleNetwork`, or ``config.ensemble`` of them."""
    members = [SpackleNetwork.from_config(config, n_genes, visual_dim) for _ in range(config.ensemble)]
    return members[0] if config.ensemble == 1 else SpackleEnsemble(members)


def _row0_layer(layer: nn.TransformerEncoderLayer, h: torch.Tensor) -> torch.Tensor:
    """Row 0 of ``layer(h)`` without computing the other rows' outputs (post-norm, as built above).

    Every row is still a key/value; only the query, residual and feed-forward of row 0 are evaluated, which
    is all the read-out needs (the last layer's other outputs would be discarded).
    """
    q = h[:, :1]
    attended = layer.self_attn(q, h, h, need_weights=False)[0]
    q = layer.norm1(q + layer.dropout1(attended))
    ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(q))))
    return layer.norm2(q + layer.dropout2(ff))[:, 0]


@dataclass
class SpackleModel:
    """A trained SpaCKLE: network weights, hyper-parameters, the ordered gene list and its training log.

    Attributes
    ----------
    network
        The :class:`SpackleNetwork` (best validation weights after :func:`fit`), or a
        :class:`SpackleEnsemble` of them when ``config.ensemble > 1``.
    config
        Hyper-parameters it was built and trained with.
    genes
        Gene names (``var_names``) in the column order the network expects.
    layer
        The layer it was trained on.
    history
        ``{"train": [(step, mse), ...], "val": [(step, mse), ...]}`` (empty after :func:`load`); an ensemble's
        member ``i > 0`` logs under ``"train.i"`` and ``"val.i"``.
    best_step, best_val_mse
        Step and validation MSE of the kept weights (an ensemble: the first member's best step and the
        validation MSE of the averaged prediction).
    selection
        Which spots supplied the validation entries (the val split, or blocks held out of the slides).
    """

    network: SpackleNetwork | SpackleEnsemble
    config: SpackleConfig
    genes: list[str]
    layer: str = "c_d_log1p"
    history: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: {"train": [], "val": []})
    best_step: int | None = None
    best_val_mse: float | None = None
    selection: str = ""

    @property
    def visual_dim(self) -> int | None:
        return self.network.visual_dim

    def metadata(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-ready data."""
        return {"config": self.config.to_dict(), "genes": list(self.genes), "layer": self.layer,
                "n_genes": len(self.genes), "visual_dim": self.visual_dim, "best_step": self.best_step,
                "best_val_mse": self.best_val_mse, "selection": self.selection}

    def complete(self, adata, layer: str | None = None, key_added: str = "c_t_log1p",
                 batch_size: int = 1024, device: str | None = None, copy: bool = False):
        """Shortcut for :func:`spared.impute.spackle.complete` (``layer`` defaults to the training layer)."""
        from spared.impute.spackle.completion import complete

        return complete(adata, self, layer or self.layer, key_added, batch_size, device, copy)

    def save(self, path: str | Path) -> Path:
        """Shortcut for :func:`spared.impute.spackle.save`."""
        from spared.impute.spackle.checkpoint import save

        return save(self, path)
