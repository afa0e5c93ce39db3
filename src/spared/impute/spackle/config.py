"""Hyper-parameters of SpaCKLE in one frozen object (defaults = SPEC §3); importing it does not load torch."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

MASK_METHODS = ("mask_prob", "prob_median", "scale_factor", "uniform")
TRAIN_ON = ("all", "train")
LR_SCHEDULES = ("cosine", "constant")
MIN_AUTO_STEPS = 500
MAX_AUTO_STEPS = 5000

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "accurate": {"num_layers": 3, "mask_method": "uniform", "neighbour_mask_ratio": 1 / 3, "min_steps": 1000,
                 "ensemble": 3},
}
"""Named starting points for :meth:`SpackleConfig.preset`: the changes each makes to the defaults.

``accurate`` stacks the changes that each lowered the masked MSE a little on the real organoid collections
(3 encoder layers, one masking rate for every gene, neighbours masked at a third of the spot's rate, at least
1,000 steps) and averages three networks: 1–2 % lower masked MSE for 3–4 times the training time.
"""


@dataclass(frozen=True)
class SpackleConfig:
    """Parameters of :func:`spared.impute.spackle.fit`.

    Attributes
    ----------
    num_neighs
        Same-slide neighbours read with each spot (input = ``(1 + num_neighs) × G``).
    d_model
        Transformer width; ``None`` = number of genes (the paper's choice; 64 is as accurate on the real
        organoid collections and several times cheaper).
    num_layers, num_heads
        Transformer encoder layers and attention heads.
    ff_dim
        Width of each encoder layer's feed-forward block; ``None`` = ``4 × d_model``.
    dropout
        Dropout inside the encoder layers (training only).
    mask_method, mask_prob
        Training-mask scheme, see :func:`spared.impute.spackle.masking.mask_probabilities`.
    neighbour_mask_ratio
        The neighbours' known entries are hidden during training with this fraction of the spot's per-gene
        probability (``1`` = the same, as in the paper; ``0`` = neighbours always read in full).
    lr, weight_decay, batch_size
        AdamW learning rate and weight decay, and spots per batch.
    max_steps
        The most optimiser steps; ``None`` (default) sizes the budget to the collection:
        ``passes`` passes over the training spots, at least ``min_steps`` and at most 5,000 steps (500 for
        collections up to about 2,100 spots; her2st's 13,000 spots get about 3,000, which it needs: 500 steps
        leave its masked MSE 5 % higher).
    min_steps
        The fewest steps of the budget sized by ``passes`` (it overrides the 5,000-step ceiling).
    passes
        Passes over the training spots when ``max_steps`` is ``None``.
    lr_schedule
        ``"cosine"`` (default): the learning rate decays from ``lr`` to 0 along a half cosine over
        the step budget, so the last steps refine rather than jitter; ``"constant"``: ``lr`` throughout.
    ema_decay
        Validate and keep an exponential moving average of the weights (this decay per step) rather than
        the last weights, which smooths the noise of single steps; ``None`` = off.
    train_on
        ``"all"`` (default): every spot's known entries are training targets and inputs, whatever its split
        (the self-supervision is per entry, so the val/test slides' measured values are usable; entries a
        caller hides, e.g. :func:`spared.impute.evaluate.evaluate`, are unknown and never read).
        ``"train"``: only the train split's spots are targets (the original recipe).
    val_every
        Validate every this many training steps; the best validation MSE selects the weights kept.
    val_fraction, val_max_spots
        The validation entries: ``val_fraction`` of the known entries of at most ``val_max_spots`` validation
        spots (a seeded random subset of the val split, else the test split, else, for a single slide or
        sample, spatially separated blocks of its spots: :mod:`spared.impute.spackle.selection`), held out from
        training altogether (never an input, never a target) and predicted from everything else at each
        validation.
    patience
        Stop after this many validations without a lower validation MSE (``None``: run every step).
    seed
        Seeds weights, batch order and every mask.
    ensemble
        Members trained and averaged (``1`` = a single network, the default). Member ``i`` is trained with
        seed ``seed + i`` (weights, batch order, masks) and selected on the same held-out entries; the
        prediction is the mean of the members'. Three members lower the masked MSE by 0.5 % (her2st) to
        1.2 % (lung organoid) for three times the training time.
    visual_key
        ``obsm`` key of per-spot patch embeddings to add as an extra input token; ``None`` (default) = off.
    observed_indicator
        Also feed each entry's observed/missing flag (input ``2G`` wide), so the network can tell a missing
        value from a measured low one (an option beyond the paper).
    depth_key
        ``obs`` column with each spot's counts outside the gene panel (``"offpanel_counts"``, written by
        :func:`spared.pp.process`): read as ``log(1 + x)``, standardised, and given to every row as one more
        input, so the network knows each spot's and each neighbour's sequencing depth (an option beyond the
        paper; it never includes a panel gene, so it cannot leak a hidden value). When the column is absent,
        training warns and goes on without it; ``None`` = off.
    relative_positions
        Add an embedding of each neighbour's distance to the spot (in units of the slide's spot spacing) to
        its token, so the network can weigh near neighbours above far ones (an option beyond the paper).
    threads
        Torch CPU threads while training and completing; ``None`` = every core available to the process.
    accelerator
        Lightning accelerator: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"gpu"``.
    progress
        Show a progress bar; ``None`` = only when stderr is a terminal.
    slide_key, split_key, spatial_key
        Where slide labels, splits and coordinates live in ``obs``/``obsm``.
    """

    num_neighs: int = 18
    d_model: int | None = 64
    num_layers: int = 2
    num_heads: int = 1
    ff_dim: int | None = 128
    dropout: float = 0.0
    mask_method: str = "mask_prob"
    mask_prob: float = 0.3
    neighbour_mask_ratio: float = 1.0
    lr: float = 3e-3
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    ema_decay: float | None = 0.99
    batch_size: int = 256
    max_steps: int | None = None
    passes: float = 60.0
    min_steps: int = MIN_AUTO_STEPS
    train_on: str = "all"
    val_every: int = 10
    val_fraction: float = 0.1
    val_max_spots: int = 1024
    patience: int | None = 20
    seed: int = 0
    ensemble: int = 1
    visual_key: str | None = None
    observed_indicator: bool = True
    depth_key: str | None = "offpanel_counts"
    relative_positions: bool = False
    accelerator: str = "auto"
    threads: int | None = None
    progress: bool | None = None
    slide_key: str = "slide_id"
    split_key: str = "split"
    spatial_key: str = "spatial"

    def __post_init__(self) -> None:
        positive = ("num_neighs", "num_layers", "num_heads", "batch_size", "val_every", "val_max_spots",
                    "ensemble", "min_steps")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SpackleConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("max_steps", "d_model", "ff_dim", "patience", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"SpackleConfig.{name} must be None or an integer >= 1, got {value!r}")
        if self.mask_method not in MASK_METHODS:
            raise ValueError(f"SpackleConfig.mask_method must be one of {MASK_METHODS}, "
                             f"got {self.mask_method!r}")
        if not 0 < self.mask_prob <= 1:
            raise ValueError(f"SpackleConfig.mask_prob must lie in (0, 1], got {self.mask_prob}")
        if not 0 <= self.neighbour_mask_ratio <= 1:
            raise ValueError(f"SpackleConfig.neighbour_mask_ratio must lie in [0, 1], "
                             f"got {self.neighbour_mask_ratio}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"SpackleConfig.dropout must lie in [0, 1), got {self.dropout}")
        if isinstance(self.passes, bool) or not isinstance(self.passes, (int, float)) or not self.passes > 0:
            raise ValueError(f"SpackleConfig.passes must be a number > 0, got {self.passes!r}")
        if not self.lr > 0:
            raise ValueError(f"SpackleConfig.lr must be > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ValueError(f"SpackleConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"SpackleConfig.ema_decay must be None or lie in (0, 1), got {self.ema_decay}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"SpackleConfig.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"SpackleConfig.val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.train_on not in TRAIN_ON:
            raise ValueError(f"SpackleConfig.train_on must be one of {TRAIN_ON}, got {self.train_on!r}")
        if self.accelerator not in ("auto", "cpu", "gpu", "cuda"):
            raise ValueError(f"SpackleConfig.accelerator must be 'auto', 'cpu', 'gpu' or 'cuda', "
                             f"got {self.accelerator!r}")

    @classmethod
    def preset(cls, name: str, **changes: Any) -> SpackleConfig:
        """The configuration preset ``name`` describes (see :data:`PRESETS`), with ``changes`` applied on top."""
        if name not in PRESETS:
            raise ValueError(f"unknown SpaCKLE preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpackleConfig:
        """Build a config from a dict; unknown keys are an error naming the valid ones."""
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise KeyError(f"unknown SpaCKLE parameter(s) {unknown}; valid names: {sorted(valid)}")
        return cls(**data)

    def replace(self, **changes: Any) -> SpackleConfig:
        return type(self).from_dict({**self.to_dict(), **changes})

    def steps(self, n_spots: int) -> int:
        """Optimiser steps for ``n_spots`` training spots: ``max_steps``, or the budget sized by ``passes``."""
        if self.max_steps is not None:
            return self.max_steps
        return int(max(self.min_steps, min(MAX_AUTO_STEPS, math.ceil(self.passes * n_spots / self.batch_size))))

    def width(self, n_genes: int) -> int:
        """Transformer width for ``n_genes`` genes."""
        return self.d_model if self.d_model is not None else n_genes

    def feedforward_width(self, n_genes: int) -> int:
        """Feed-forward width of each encoder layer for ``n_genes`` genes."""
        return self.ff_dim if self.ff_dim is not None else 4 * self.width(n_genes)
