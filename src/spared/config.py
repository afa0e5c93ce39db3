"""The SpaRED processing protocol's parameters in one object (defaults = the paper's)."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ProcessingConfig:
    """Parameters of :func:`spared.pp.process`; every default is the SpaRED protocol's (SPEC §2)."""

    organism: str = "human"
    cell_min_counts: float = 10
    cell_max_counts: float = 1e6
    gene_min_counts: float = 10
    gene_max_counts: float = 1e6
    min_exp_frac: float = -1.0
    min_glob_exp_frac: float = -1.0
    real_data_percentage: float = 0.7
    top_moran_genes: int = 128
    combat_key: str | None = "slide_id"
    wildcard_genes: tuple[str, ...] | None = None
    hex_geometry: bool = True
    patch_size: int = 224
    patch_scale: float = 1.0
    median_max_hops: int = 4
    spatial_graphs: str = "spared"
    complete_missing: bool = True
    spackle_max_steps: int = 1000
    seed: int = 0
    slide_key: str = "slide_id"
    split_key: str = "split"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.organism not in ("human", "mouse"):
            raise ValueError(f"organism must be 'human' or 'mouse', got {self.organism!r}")
        if not 0 <= self.real_data_percentage <= 1:
            raise ValueError(f"real_data_percentage must lie in [0, 1], got {self.real_data_percentage}")
        if self.spatial_graphs not in ("spared", "original"):
            raise ValueError(f"spatial_graphs must be 'spared' (median windows on the symmetrised kNN graph) or "
                             f"'original' (the original SpaRED library's directed squidpy graph), "
                             f"got {self.spatial_graphs!r}")
        if self.top_moran_genes < 1:
            raise ValueError(f"top_moran_genes must be >= 1, got {self.top_moran_genes}")
        if self.wildcard_genes is not None and not isinstance(self.wildcard_genes, tuple):
            object.__setattr__(self, "wildcard_genes", tuple(self.wildcard_genes))

    @property
    def n_neighs(self) -> int:
        """Neighbours per spot in the spatial graph: 6 on a hexagonal array, 8 on a square grid."""
        return 6 if self.hex_geometry else 8

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["wildcard_genes"] is not None:
            out["wildcard_genes"] = list(out["wildcard_genes"])
        return out

    def replace(self, **changes: Any) -> ProcessingConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            valid = ", ".join(f.name for f in dataclasses.fields(self))
            raise KeyError(f"unknown processing parameter(s) {sorted(unknown)}; valid names: {valid}")
        return dataclasses.replace(self, **changes)

    def with_overrides(self, assignments: list[str]) -> ProcessingConfig:
        """Apply ``key=value`` strings (values parsed as JSON when possible, else kept as text)."""
        changes: dict[str, Any] = {}
        for item in assignments:
            if "=" not in item:
                raise ValueError(f"expected key=value, got {item!r}")
            key, raw = item.split("=", 1)
            changes[key.strip()] = _parse_value(raw.strip())
        return self.replace(**changes)

    @classmethod
    def from_file(cls, path: str | Path) -> ProcessingConfig:
        """Read a TOML or JSON file of parameters (unknown keys are an error)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        return cls().replace(**data)

    def hash(self) -> str:
        """A short stable hash of the parameters (cache keys)."""
        import hashlib

        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _parse_value(raw: str) -> Any:
    if raw.lower() in ("none", "null"):
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
