"""The SpaRED processing protocol's parameters in one object (defaults = the paper's), and field parsing.

:func:`parse_field` converts a value (text from ``--set key=value``, or a JSON/TOML value) to a dataclass field's
declared type, so every field, present or future, is parsed from its annotation alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Spellings of booleans accepted in ``--set`` values and config files (case-insensitive).
TRUE_WORDS = frozenset({"true", "yes", "on", "1", "y", "t"})
FALSE_WORDS = frozenset({"false", "no", "off", "0", "n", "f"})
NONE_WORDS = frozenset({"none", "null"})

#: Processing presets: how a collection's layers are computed, each the fields it sets (the dataset's own parameters,
#: such as ``top_moran_genes``, are not part of a preset). ``spared``: this package's defaults. ``original``: the
#: original SpaRED library's layers as far as they are right to reproduce (its directed spatial graphs for the
#: median filter and Moran's I); see docs/processing.md for what it does not copy (its gene-length table, its ComBat
#: package's bug).
PROCESSING_PRESETS: dict[str, dict[str, Any]] = {
    "spared": {"spatial_graphs": "spared"},
    "original": {"spatial_graphs": "original"},
}
#: :attr:`ProcessingConfig.preset_name` of a configuration that matches no preset in full.
CUSTOM_PRESET = "custom"


@dataclass(frozen=True)
class ProcessingConfig:
    """Parameters of :func:`spared.pp.process`; every default is the SpaRED protocol's (SPEC §2).

    ``split_scheme`` picks the train/val/test slides: ``"catalogue"`` (as read), ``"lopo:<patient>"``
    (leave one patient out) or ``"loso:<slide>"`` (see :mod:`spared.pp.splits`).

    A preset (:data:`PROCESSING_PRESETS`) is a set of field values, not a field:
    ``ProcessingConfig.preset("original")``, ``config.replace(preset="original")``, ``--set preset=original`` and
    ``preset = "original"`` in a settings file expand it (fields given beside it win), and :attr:`preset_name`
    tells which preset a configuration matches.
    """

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
    spackle_max_steps: int | None = None
    seed: int = 0
    slide_key: str = "slide_id"
    split_key: str = "split"
    split_scheme: str = "catalogue"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, parse_field(getattr(self, f.name), hints[f.name], f.name))
        problems = [p for p in _field_problems(self) if p]
        if problems:
            raise ValueError("invalid processing parameter(s): " + "; ".join(problems))

    @property
    def n_neighs(self) -> int:
        """Neighbours per spot in the spatial graph: 6 on a hexagonal array, 8 on a square grid."""
        return 6 if self.hex_geometry else 8

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["wildcard_genes"] is not None:
            out["wildcard_genes"] = list(out["wildcard_genes"])
        return out

    @classmethod
    def preset(cls, name: str, **changes: Any) -> ProcessingConfig:
        """The defaults with preset ``name`` (:data:`PROCESSING_PRESETS`) applied, then ``changes``."""
        return cls().replace(preset=name, **changes)

    @property
    def preset_name(self) -> str:
        """The preset whose every field this configuration has (``"spared"``, ``"original"``), else ``"custom"``."""
        return preset_of(self.to_dict())

    def replace(self, **changes: Any) -> ProcessingConfig:
        """A copy with ``changes``; the key ``preset`` expands to that preset's fields (the others given win)."""
        preset = changes.pop("preset", None)
        if preset is not None:
            if preset not in PROCESSING_PRESETS:
                raise ValueError(f"'preset' must be one of {list(PROCESSING_PRESETS)}, got {preset!r}")
            changes = {**PROCESSING_PRESETS[preset], **changes}
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            valid = ", ".join(["preset", *(f.name for f in dataclasses.fields(self))])
            raise KeyError(f"unknown processing parameter(s) {sorted(unknown)}; valid names: {valid}")
        return dataclasses.replace(self, **changes)

    def with_overrides(self, assignments: list[str]) -> ProcessingConfig:
        """Apply ``key=value`` strings, each value parsed to its field's type (see :func:`parse_field`)."""
        changes: dict[str, Any] = {}
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"expected key=value, got {item!r}")
            changes[key.strip()] = raw.strip()
        return self.replace(**changes)

    @classmethod
    def from_file(cls, path: str | Path, base: ProcessingConfig | None = None) -> ProcessingConfig:
        """Read a TOML or JSON file of parameters over ``base`` (default: the SpaRED defaults); unknown keys and
        unparsable values are errors naming the file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        data = read_settings_file(path)
        try:
            return (base or cls()).replace(**data)
        except KeyError as exc:
            raise KeyError(f"{path}: {exc.args[0]}") from exc
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def hash(self) -> str:
        """A short stable hash of the parameters (cache keys)."""
        import hashlib

        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def preset_of(settings: dict[str, Any]) -> str:
    """The preset (:data:`PROCESSING_PRESETS`) whose every field ``settings`` has, else ``"custom"``.

    ``settings`` is a :meth:`ProcessingConfig.to_dict` (e.g. the JSON in a processed collection's
    ``uns["spared"]["config"]``); a field it lacks (written by an older version) counts as its default.
    """
    defaults = dataclasses.asdict(ProcessingConfig())
    for name, values in PROCESSING_PRESETS.items():
        if all(settings.get(key, defaults[key]) == value for key, value in values.items()):
            return name
    return CUSTOM_PRESET


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """The table of a TOML (or ``.json``) settings file; a parse error or a non-table names the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise ValueError(f"could not parse {path} as {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a table of key = value settings, found a {type(data).__name__}")
    return data


def parse_field(value: Any, hint: Any, name: str) -> Any:
    """``value`` converted to the type ``hint``; a ``ValueError`` naming ``name`` when it does not convert.

    Text is parsed the way a user types it on a command line: booleans from ``true/false``, ``yes/no``,
    ``on/off``, ``1/0``; numbers (an integer field accepts ``1e3`` but not ``1.5``); ``none``/``null`` for
    optional fields; lists as ``a,b,c`` or a JSON list; mappings as a JSON object. Values that already have the
    type (from JSON/TOML or Python) are checked the same way.
    """
    try:
        return _convert(value, hint)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name!r} {exc}") from None


def _convert(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS)):
            return None
        errors = []
        for option in options:
            try:
                return _convert(value, option)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError(" or ".join(errors) + (" (or none)" if type(None) in args else ""))
    if value is None:
        raise ValueError(f"must be {_describe(hint)}; None is not allowed")
    if origin is typing.Literal:
        text = value.strip() if isinstance(value, str) else value
        if text not in args:
            raise ValueError(f"must be one of {list(args)}, got {value!r}")
        return text
    if origin in (tuple, list) or hint in (tuple, list):
        item = args[0] if args else Any
        items = _as_list(value)
        converted = [_convert(v, item) for v in items]
        return tuple(converted) if (origin or hint) is tuple else converted
    if origin is dict or hint is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"must be a JSON object such as {{\"key\": 1}}, got {value!r}") from None
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        return _to_bool(value)
    if hint is int:
        return _to_int(value)
    if hint is float:
        return _to_float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"must be text, got {value!r}")
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ValueError(f"must be {_describe(hint)}, got {value!r}")
    return value


def _describe(hint: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "text"}
    return names.get(hint, f"of type {getattr(hint, '__name__', hint)}")


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError(f"must be a list (a,b,c or a JSON list), got {value!r}") from None
            if isinstance(parsed, list):
                return parsed
        return [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    raise ValueError(f"must be a list, got {value!r}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ValueError(f"must be a boolean (true/false, yes/no, on/off, 1/0), got {value!r}")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    number = value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise ValueError(f"must be an integer, got {value!r}") from None
    if isinstance(number, float) and math.isfinite(number) and number.is_integer():
        return int(number)
    raise ValueError(f"must be an integer, got {value!r}")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"must be a number, got {value!r}") from None
    if math.isnan(number):
        raise ValueError(f"must be a number, got {value!r}")
    return number


def _field_problems(cfg: ProcessingConfig) -> list[str]:
    """What is wrong with the values of a :class:`ProcessingConfig` whose fields already have their types."""
    def fraction_or_off(name: str) -> str:
        value = getattr(cfg, name)
        return "" if value == -1 or 0 <= value <= 1 else f"{name} must lie in [0, 1] (or be -1: no filter), got {value}"

    def at_least(name: str, low: float, strict: bool = False) -> str:
        value = getattr(cfg, name)
        ok = value > low if strict else value >= low
        return "" if ok else f"{name} must be {'>' if strict else '>='} {low:g}, got {value}"

    return [
        "" if cfg.organism in ("human", "mouse") else f"organism must be 'human' or 'mouse', got {cfg.organism!r}",
        at_least("cell_min_counts", 0), at_least("gene_min_counts", 0),
        "" if cfg.cell_max_counts > cfg.cell_min_counts else
        f"cell_max_counts must exceed cell_min_counts ({cfg.cell_min_counts:g}), got {cfg.cell_max_counts:g}",
        "" if cfg.gene_max_counts > cfg.gene_min_counts else
        f"gene_max_counts must exceed gene_min_counts ({cfg.gene_min_counts:g}), got {cfg.gene_max_counts:g}",
        fraction_or_off("min_exp_frac"), fraction_or_off("min_glob_exp_frac"),
        "" if 0 <= cfg.real_data_percentage <= 1 else
        f"real_data_percentage must lie in [0, 1], got {cfg.real_data_percentage}",
        at_least("top_moran_genes", 1), at_least("patch_size", 1), at_least("patch_scale", 0, strict=True),
        at_least("median_max_hops", 1), at_least("seed", 0),
        "" if cfg.spackle_max_steps is None else at_least("spackle_max_steps", 1),
        *(f"{name} must be a non-empty column name" for name in ("slide_key", "split_key")
          if not getattr(cfg, name).strip()),
        "combat_key must be a column name or None" if cfg.combat_key is not None and not cfg.combat_key.strip() else "",
        "" if cfg.spatial_graphs in ("spared", "original") else
        f"spatial_graphs must be 'spared' (median windows on the symmetrised kNN graph) or 'original' (the "
        f"original SpaRED library's directed squidpy graph), got {cfg.spatial_graphs!r}",
        _split_scheme_problem(cfg.split_scheme),
    ]


def _split_scheme_problem(scheme: str) -> str:
    from spared.pp.splits import parse_split_scheme

    try:
        parse_split_scheme(scheme)
    except ValueError as exc:
        return str(exc)
    return ""
