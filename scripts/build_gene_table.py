"""Build a shipped gene table (gene_id, gene_symbol, gene_length, gene_type, level, readthrough) from a GENCODE GTF.

Usage: ``python scripts/build_gene_table.py GTF OUT.tsv.gz``. When a ``SHA256SUMS`` file sits next to the
GTF, the GTF's checksum must match the one listed there. The output is written atomically and is
byte-for-byte reproducible (gzip header timestamp fixed to 0).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import sys
import tempfile
from pathlib import Path

from spared.annotation.build import build_gene_table

SHIPPED_COLUMNS = ["gene_symbol", "gene_length", "gene_type", "level", "readthrough"]


def sha256_of(path: Path) -> str:
    """Hex sha256 digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(gtf: Path) -> str | None:
    """Check ``gtf`` against a sibling ``SHA256SUMS``; return the digest, or None when there is no such file."""
    sums = gtf.parent / "SHA256SUMS"
    if not sums.is_file():
        return None
    listed = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            listed[name.lstrip("*")] = digest.lower()
    if gtf.name not in listed:
        raise SystemExit(f"{sums} does not list {gtf.name}; add its sha256 there or move the GTF elsewhere")
    actual = sha256_of(gtf)
    if actual != listed[gtf.name]:
        raise SystemExit(
            f"sha256 mismatch for {gtf}: expected {listed[gtf.name]} (from {sums}), found {actual}; "
            "download the file again from its public source"
        )
    return actual


def write_table(gtf: Path, out: Path) -> int:
    """Build the table from ``gtf`` and write it atomically to ``out`` (gzip TSV); return the gene count."""
    table = build_gene_table(gtf)[SHIPPED_COLUMNS]
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            gz.write(table.to_csv(sep="\t", index_label="gene_id").encode())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return len(table)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gtf", type=Path, help="GENCODE annotation GTF (.gtf or .gtf.gz)")
    parser.add_argument("out", type=Path, help="output table (.tsv.gz)")
    args = parser.parse_args(argv)
    digest = verify_checksum(args.gtf)
    n_genes = write_table(args.gtf, args.out)
    check = f"sha256 {digest} verified" if digest else "no SHA256SUMS next to the GTF, checksum not verified"
    print(f"wrote {n_genes} genes to {args.out} ({check})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
