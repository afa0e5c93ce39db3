"""The SpaRED database catalogue: one declarative TOML spec per public dataset (``specs/<key>.toml``)."""

from spared.catalog.spec import (
    KNOWN_FORMATS,
    ORGANISMS,
    SOURCES,
    SPLITS,
    DatasetSpec,
    FileSpec,
    SlideSpec,
    SpecError,
    UnknownDatasetError,
    all_specs,
    list_datasets,
    load_spec,
    parse_spec,
    validate_spec,
)

__all__ = [
    "KNOWN_FORMATS",
    "ORGANISMS",
    "SOURCES",
    "SPLITS",
    "DatasetSpec",
    "FileSpec",
    "SlideSpec",
    "SpecError",
    "UnknownDatasetError",
    "all_specs",
    "list_datasets",
    "load_spec",
    "parse_spec",
    "validate_spec",
]
