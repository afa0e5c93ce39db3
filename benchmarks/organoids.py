"""The shared real organoid collections (Villacampa et al. 2021), processed with their catalogue settings.

Used by ``bench_spackle.py`` and the slow SpaCKLE accuracy test so that both build the data the same way:
the Space Ranger folders under ``$SPARED_REALDATA/villacampa_xjtv62ncwr/data/<organoid>/<slide>/`` are read
with the ``visium_spaceranger`` reader, the slides (ids, patients, splits) come from the catalogue spec, and
the SpaRED protocol runs without SpaCKLE completion (``complete_missing=False``: completion is what is being
measured). The processed ``.h5ad`` is cached under ``cache_dir`` (outside the repository).

Usage::

    python benchmarks/organoids.py [--cache /tmp/spackle_data]   # build both and print their paths
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

#: Catalogue key -> folder of its slides under ``villacampa_xjtv62ncwr/data``.
ORGANOIDS = {"villacampa_lung_organoid": "lungorganoid", "villacampa_kidney_organoid": "kidneyorganoid"}
DEFAULT_CACHE = Path("/tmp/spackle_data")


def realdata_root() -> Path | None:
    """``$SPARED_REALDATA`` when it names an existing folder, else ``None``."""
    root = os.environ.get("SPARED_REALDATA")
    return Path(root) if root and Path(root).is_dir() else None


def organoid_h5ad(key: str, cache_dir: str | Path = DEFAULT_CACHE, root: str | Path | None = None) -> Path:
    """Path of the processed collection ``key`` (one of :data:`ORGANOIDS`), built on first use.

    Raises ``FileNotFoundError`` naming ``$SPARED_REALDATA`` when the raw folders are not there.
    """
    from spared.catalog.spec import load_spec
    from spared.io.atomic import write_h5ad

    if key not in ORGANOIDS:
        raise ValueError(f"unknown organoid collection {key!r}; choose one of {list(ORGANOIDS)}")
    root = Path(root) if root is not None else realdata_root()
    folder = None if root is None else root / "villacampa_xjtv62ncwr" / "data" / ORGANOIDS[key]
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(f"raw slides of {key} not found (expected {folder or '$SPARED_REALDATA/...'}); "
                                "set SPARED_REALDATA to the shared realdata folder")
    from spared.pp.protocol import PROTOCOL_REVISION

    path = Path(cache_dir) / f"{key}.r{PROTOCOL_REVISION}.h5ad"  # a new protocol revision rebuilds
    if path.is_file():
        return path
    from spared.io.readers import read
    from spared.pp import process

    spec = load_spec(key)
    slides = [{"id": s.id, "patient": s.patient, "split": s.split, "path": s.id} for s in spec.slides]
    raw = read(spec.format, folder, slides, spec.organism)
    processed = process(raw, spec.processing_config().replace(complete_missing=False), progress=False, dataset=key,
                        copy=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_h5ad(processed, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder for the processed .h5ad files")
    args = parser.parse_args()
    for key in ORGANOIDS:
        print(organoid_h5ad(key, args.cache))


if __name__ == "__main__":
    main()
