"""Dataset specs: what to download, how it is laid out, which slide goes to which split, and how to process it."""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any

from spared.config import ProcessingConfig

#: Reader formats; ``spared.io.readers.READERS`` implements exactly these names (see docs/formats.md).
KNOWN_FORMATS: tuple[str, ...] = ("visium_spaceranger", "visium_mtx_folders", "geo_visium", "h5ad", "st", "hest")
ORGANISMS: tuple[str, ...] = ("human", "mouse")
#: Spot-array technologies: 10x Visium (hexagonal, 6 neighbours) and legacy ST (square grid, 8 neighbours).
TECHNOLOGIES: tuple[str, ...] = ("visium", "st")
TECHNOLOGY_NAMES: dict[str, str] = {"visium": "Visium", "st": "ST"}
SOURCES: tuple[str, ...] = ("10x", "mendeley", "geo", "figshare", "zenodo", "github", "huggingface")
SPLITS: tuple[str, ...] = ("train", "val", "test")
ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz", ".tar", ".zip")

_KEY = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PROCESSING_FIELDS = frozenset(f.name for f in dataclasses.fields(ProcessingConfig))


class SpecError(ValueError):
    """A dataset spec is malformed or inconsistent; the message lists every problem found."""


class UnknownDatasetError(LookupError):
    """No spec exists under the requested key."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def strip_archive_suffix(name: str) -> str:
    """``name`` without its archive suffix (``a/b.tar.gz`` → ``a/b``); unchanged when it is not an archive."""
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class FileSpec:
    """One file to download.

    Parameters
    ----------
    url
        Where to fetch it.
    filename
        Local path relative to the dataset folder (may contain sub-folders).
    sha256
        Expected hex digest; ``""`` when not yet known (recorded on first download).
    size_bytes
        Expected size, when known.
    unpack
        Unpack this archive (zip, tar, tar.gz) after downloading.
    unpack_to
        Folder (relative to the dataset folder) to unpack into; defaults to ``filename`` minus its suffix.
    """

    url: str
    filename: str
    sha256: str = ""
    size_bytes: int | None = None
    unpack: bool = False
    unpack_to: str | None = None

    @property
    def target(self) -> str:
        """The folder an archive unpacks into, relative to the dataset folder."""
        return self.unpack_to if self.unpack_to is not None else strip_archive_suffix(self.filename)


@dataclass(frozen=True)
class SlideSpec:
    """One slide and where its files live (paths relative to the dataset folder; glob patterns allowed).

    Parameters
    ----------
    id
        Slide (library) id.
    patient
        Patient / donor.
    split
        ``"train"``, ``"val"`` or ``"test"``.
    path
        Folder holding the slide's files.
    image
        Full-resolution image, when it is not inside ``path``.
    hires_image
        ``tissue_hires_image.png``, when it is not inside ``path``.
    prefix
        Text every file name of the slide contains (slides sharing one flat folder).
    counts, spots
        Legacy ST: the section's count table and spot file.
    """

    id: str
    patient: str
    split: str
    path: str
    image: str | None = None
    hires_image: str | None = None
    prefix: str | None = None
    counts: str | None = None
    spots: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A catalogue entry: one public dataset of the SpaRED database.

    ``extra`` marks datasets beyond the paper's 26 (listed by ``spared datasets --all``); ``reader`` holds
    options of the format's reader (e.g. ``spot_diameter_um`` for ``st``).
    """

    key: str
    title: str
    organism: str
    tissue: str
    format: str
    files: tuple[FileSpec, ...]
    slides: tuple[SlideSpec, ...]
    doi: str = ""
    homepage: str = ""
    technology: str = "visium"
    source: str = ""
    licence: str = ""
    approx_spots: int = 0
    download_group: str = ""
    unpack_nested: tuple[str, ...] = ()
    extra: bool = False
    reader: Mapping[str, Any] = field(default_factory=dict)
    processing: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "slides", tuple(self.slides))
        object.__setattr__(self, "unpack_nested", tuple(self.unpack_nested))
        object.__setattr__(self, "reader", MappingProxyType(dict(self.reader)))
        object.__setattr__(self, "processing", MappingProxyType(dict(self.processing)))

    @property
    def group(self) -> str:
        """Name of the download folder (shared by datasets that use the same archives)."""
        return self.download_group or self.key

    @property
    def splits(self) -> dict[str, tuple[str, ...]]:
        """Slide ids per split, in catalogue order (splits without slides are omitted)."""
        out: dict[str, list[str]] = {}
        for slide in self.slides:
            out.setdefault(slide.split, []).append(slide.id)
        return {name: tuple(out[name]) for name in SPLITS if name in out}

    @property
    def patients(self) -> tuple[str, ...]:
        """Distinct patients, in catalogue order."""
        return tuple(dict.fromkeys(s.patient for s in self.slides))

    @property
    def geometry(self) -> str:
        """``"hex"`` (6 neighbours, Visium) or ``"square"`` (8 neighbours, legacy ST), from ``hex_geometry``."""
        return "hex" if self.processing.get("hex_geometry", True) else "square"

    @property
    def technology_name(self) -> str:
        """The technology as people write it (``"Visium"``, ``"ST"``), with ``" (HEST)"`` for HEST samples."""
        name = TECHNOLOGY_NAMES.get(self.technology, self.technology)
        return f"{name} (HEST)" if self.format == "hest" else name

    def folds(self, scheme: str = "lopo") -> tuple[str, ...]:
        """The ``split_scheme`` values of the leave-one-patient-out (``"lopo"``) or leave-one-slide-out
        (``"loso"``) folds, one per patient or slide in catalogue order (see :mod:`spared.pp.splits`)."""
        from spared.pp.splits import fold_schemes

        return fold_schemes([s.patient for s in self.slides], [s.id for s in self.slides], scheme)

    def processing_config(self, base: ProcessingConfig | None = None) -> ProcessingConfig:
        """``base`` (default: the SpaRED defaults) with this dataset's organism and processing overrides."""
        base = base if base is not None else ProcessingConfig()
        return base.replace(organism=self.organism, **dict(self.processing))

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (TOML/JSON-ready: ``None`` values are left out)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("files", "slides"):
                out[f.name] = [_drop_none(dataclasses.asdict(item)) for item in value]
            elif f.name == "unpack_nested":
                out[f.name] = list(value)
            elif f.name in ("processing", "reader"):
                out[f.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
            else:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetSpec:
        """Build a spec from :meth:`to_dict` output or a parsed TOML file (unknown keys are an error)."""
        where = f"spec {data.get('key', '<no key>')!r}"
        data = dict(data)
        _check_keys(data, cls, where)
        files = tuple(_build(FileSpec, item, f"{where}, file #{i + 1}") for i, item in enumerate(data.pop("files")))
        slides = tuple(_build(SlideSpec, item, f"{where}, slide #{i + 1}") for i, item in enumerate(data.pop("slides")))
        return cls(files=files, slides=slides, **data)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _check_keys(data: Mapping[str, Any], cls: type, where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = [n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in data]
    unknown = sorted(set(data) - set(fields))
    problems = []
    if missing:
        problems.append(f"missing required field(s) {missing}")
    if unknown:
        problems.append(f"unknown field(s) {unknown}")
    if problems:
        raise SpecError(f"{where}: {'; '.join(problems)}; expected fields: {sorted(fields)}")


def _build(cls: type, item: Any, where: str) -> Any:
    if not isinstance(item, Mapping):
        raise SpecError(f"{where}: expected a table of fields, found {type(item).__name__} {item!r}")
    _check_keys(item, cls, where)
    return cls(**item)


def _relative_problem(path: str, what: str) -> str | None:
    if not path:
        return f"{what} is empty"
    parts = PurePosixPath(path).parts
    if path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path) or ".." in parts:
        return f"{what} {path!r} must be a relative path inside the dataset folder (no leading '/', no '..')"
    return None


def validate_spec(spec: DatasetSpec) -> DatasetSpec:
    """Check a spec and return it unchanged; raise :class:`SpecError` listing every problem found.

    Checks: key, organism, technology, source and format known; at least one file, each with an https URL,
    a relative unique filename and a well-formed sha256 (or ``""``); slide ids unique, every slide in exactly
    one of train/val/test with a patient and a relative path, train and val present; processing overrides
    name :class:`~spared.config.ProcessingConfig` fields with valid values; legacy-ST specs use the square grid;
    ``[reader]`` options are ones the format's reader accepts.
    """
    problems: list[str] = []
    if not _KEY.match(spec.key or ""):
        problems.append(f"key {spec.key!r} must be lower-case letters, digits and '_'")
    for name, value, known in (("organism", spec.organism, ORGANISMS), ("format", spec.format, KNOWN_FORMATS),
                               ("technology", spec.technology, TECHNOLOGIES), ("source", spec.source, SOURCES)):
        if value not in known:
            problems.append(f"{name} {value!r} is not one of {list(known)}")
    if not spec.title:
        problems.append("title is empty")
    if not isinstance(spec.approx_spots, int) or spec.approx_spots < 0:
        problems.append(f"approx_spots must be a non-negative integer, found {spec.approx_spots!r}")
    problems += _file_problems(spec)
    problems += _slide_problems(spec)
    for pattern in spec.unpack_nested:
        if (p := _relative_problem(pattern, "unpack_nested pattern")) is not None:
            problems.append(p)
    problems += _processing_problems(spec)
    problems += _technology_problems(spec)
    if problems:
        listing = "\n  - ".join(problems)
        raise SpecError(f"spec {spec.key!r} is invalid:\n  - {listing}")
    return spec


def _file_problems(spec: DatasetSpec) -> list[str]:
    if not spec.files:
        return ["no [[files]] listed: a dataset needs at least one file to download"]
    problems = []
    names = [f.filename for f in spec.files]
    for f in spec.files:
        if not f.url.startswith("https://"):
            problems.append(f"file {f.filename!r}: url {f.url!r} must start with https://")
        if (p := _relative_problem(f.filename, "filename")) is not None:
            problems.append(p)
        if f.sha256 and not _SHA256.match(f.sha256):
            problems.append(f"file {f.filename!r}: sha256 {f.sha256!r} must be 64 lower-case hex digits or ''")
        if f.size_bytes is not None and (not isinstance(f.size_bytes, int) or f.size_bytes <= 0):
            problems.append(f"file {f.filename!r}: size_bytes must be a positive integer, found {f.size_bytes!r}")
        if f.unpack and f.unpack_to is None and strip_archive_suffix(f.filename) == f.filename:
            problems.append(f"file {f.filename!r} has unpack = true but is not a {'/'.join(ARCHIVE_SUFFIXES)} "
                            f"archive: set unpack_to or unpack = false")
        if f.unpack_to is not None and (p := _relative_problem(f.unpack_to, "unpack_to")) is not None:
            problems.append(p)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"filename(s) listed more than once: {repeated}")
    return problems


def _slide_problems(spec: DatasetSpec) -> list[str]:
    if not spec.slides:
        return ["no [[slides]] listed"]
    problems = []
    seen: dict[str, list[str]] = {}
    for s in spec.slides:
        seen.setdefault(s.id, []).append(s.split)
        if not s.id:
            problems.append("a slide has an empty id")
        if s.split not in SPLITS:
            problems.append(f"slide {s.id!r} is in no split: split {s.split!r} must be one of {list(SPLITS)}")
        if not s.patient:
            problems.append(f"slide {s.id!r} has no patient")
        for what, value in (("path", s.path), ("image", s.image), ("hires_image", s.hires_image),
                            ("counts", s.counts), ("spots", s.spots)):
            if (value is not None or what == "path") and (p := _relative_problem(value or "", what)) is not None:
                problems.append(f"slide {s.id!r}: {p}")
    for slide_id, splits in seen.items():
        if len(splits) > 1:
            problems.append(f"slide {slide_id!r} is listed {len(splits)} times (splits {splits}); "
                            f"each slide belongs to exactly one split")
    for needed in ("train", "val"):
        if needed not in spec.splits:
            problems.append(f"no slide in the {needed!r} split: a dataset needs train and val slides")
    return problems


def _processing_problems(spec: DatasetSpec) -> list[str]:
    unknown = sorted(set(spec.processing) - _PROCESSING_FIELDS)
    if unknown:
        close = {k: difflib.get_close_matches(k, _PROCESSING_FIELDS, n=1) for k in unknown}
        hints = ", ".join(f"{k!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for k, c in close.items())
        return [f"unknown [processing] key(s) {hints}; valid keys: {sorted(_PROCESSING_FIELDS)}"]
    if spec.processing.get("organism", spec.organism) != spec.organism:
        return [f"[processing] organism {spec.processing['organism']!r} contradicts organism {spec.organism!r}"]
    if spec.organism not in ORGANISMS:
        return []
    try:
        spec.processing_config()
    except (ValueError, TypeError) as exc:
        return [f"[processing] values are invalid: {exc}"]
    return []


def _technology_problems(spec: DatasetSpec) -> list[str]:
    problems = []
    if not isinstance(spec.extra, bool):
        problems.append(f"extra must be true or false, found {spec.extra!r}")
    if spec.technology == "st" and spec.geometry != "square":
        problems.append("technology 'st' arrays are square grids (8 neighbours): set [processing] "
                        "hex_geometry = false")
    if spec.format == "st" and spec.technology != "st":
        problems.append(f"format 'st' reads legacy ST sections, but technology is {spec.technology!r}")
    if spec.reader and spec.format in KNOWN_FORMATS:
        from spared.io.readers import reader_options

        unknown = sorted(set(spec.reader) - set(reader_options(spec.format)))
        if unknown:
            problems.append(f"unknown [reader] option(s) {unknown} for format {spec.format!r}; valid: "
                            f"{list(reader_options(spec.format)) or 'none'}")
    return problems


def _specs_folder() -> Any:
    return resources.files("spared.catalog") / "specs"


@cache
def _shipped_keys() -> tuple[str, ...]:
    return tuple(sorted(p.name[: -len(".toml")] for p in _specs_folder().iterdir() if p.name.endswith(".toml")))


def list_datasets(include_extras: bool = False) -> list[str]:
    """Keys of the shipped dataset specs, sorted: the SpaRED collections, plus the extras when asked."""
    keys = list(_shipped_keys())
    return keys if include_extras else [k for k in keys if not load_spec(k).extra]


def parse_spec(text: str, where: str = "<text>") -> DatasetSpec:
    """Parse and validate TOML text of one spec."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{where} is not valid TOML: {exc}") from exc
    return validate_spec(DatasetSpec.from_dict(data))


@cache
def load_spec(key: str) -> DatasetSpec:
    """The validated spec of dataset ``key``; an unknown key raises :class:`UnknownDatasetError` with close matches."""
    names = _shipped_keys()
    if key not in names:
        close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownDatasetError(f"unknown dataset {key!r}{hint} ('spared datasets --all' lists all "
                                  f"{len(names)})")
    resource = _specs_folder() / f"{key}.toml"
    spec = parse_spec(resource.read_text(encoding="utf-8"), where=f"catalog spec {key}.toml")
    if spec.key != key:
        raise SpecError(f"catalog spec {key}.toml declares key {spec.key!r}; the file name and key must agree")
    return spec


def all_specs(include_extras: bool = False) -> list[DatasetSpec]:
    """The shipped specs sorted by key: the SpaRED collections, plus the extras when asked."""
    return [load_spec(k) for k in list_datasets(include_extras)]
