"""Simulated Visium collections with known truth (demo, tests and validation of the whole pipeline).

Each slide is a blob of spots cut out of a hexagonal Visium array. Spots belong to smooth tissue
domains; genes follow per-domain programs, smooth gradients or nothing at all (pure noise). A true rate
``λ`` (spots × genes) carries log-normal gene means, per-spot library sizes and a per-slide batch effect;
negative-binomial counts drawn from ``λ`` are the truth (``layers["true_counts"]``) and zero-inflating
dropout on top of them gives the observed ``X``. An H&E-like image whose colour and texture follow the
domains lets image models learn histology → expression.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import anndata
    import pandas as pd
    import scipy.sparse as sp

#: Number of tissue domains (shared across slides: a domain is a tissue type).
N_DOMAINS = 5
#: Visium centre-to-centre distance over spot diameter (100 µm / 55 µm).
SPACING_PER_DIAMETER = 100.0 / 55.0
#: Organisms with a gene annotation.
ORGANISMS = ("human", "mouse")

# Gene programs: fraction of genes driven by domains, by smooth gradients; the rest is pure noise.
_FRAC_DOMAIN, _FRAC_GRADIENT = 0.45, 0.25
_N_GRADIENTS = 3
# log-normal gene means (counts per spot before library/batch factors) and NB dispersion (size)
_LOG_MEAN, _LOG_MEAN_SD = math.log(0.15), 2.2
_LOG_THETA, _LOG_THETA_SD = math.log(4.0), 0.5
_LIBRARY_SD = 0.3
# dropout probability: dropout / (1 + (λ / _DROP_HALF) ** _DROP_POWER)
_DROP_HALF, _DROP_POWER = 1.0, 1.0
# random-Fourier domain fields: length scale (tissue radii), features per domain, softmax sharpness
_DOMAIN_SCALE, _DOMAIN_FEATURES, _DOMAIN_SHARPNESS = 0.45, 16, 5.0

# H&E-like look per domain: base RGB, nuclei density (0..1) and nuclei radius (px at 24 px spots)
_DOMAIN_RGB = np.array(
    [[232, 146, 178], [176, 96, 170], [248, 206, 222], [120, 110, 196], [206, 138, 168]], dtype=np.float32
)
_NUCLEI_DENSITY = np.array([0.12, 0.75, 0.3, 1.0, 0.5], dtype=np.float32)
_NUCLEI_RADIUS = np.array([1.2, 2.4, 1.5, 1.3, 1.9], dtype=np.float32)
_NUCLEUS_RGB = np.array([72, 34, 112], dtype=np.float32)
_BACKGROUND_RGB = np.array([243, 232, 238], dtype=np.float32)
_NOISE = 9  # pixel noise amplitude (grey levels)
_LOWRES_MAX_SIDE = 600


def hex_lattice(n_rows: int, n_cols: int, spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spot positions of a Visium-like hexagonal array.

    Parameters
    ----------
    n_rows
        Array rows.
    n_cols
        Spots per row.
    spacing
        Centre-to-centre distance between neighbouring spots (pixels).

    Returns
    -------
    ``(array_row, array_col, xy)``, row-major: ``array_col`` steps by 2 along a row and odd rows are
    offset by 1 (as in Visium); ``xy`` is ``(n_rows * n_cols, 2)`` float64 ``(x, y)`` with every interior
    spot at distance ``spacing`` from its 6 neighbours, the first spot at the origin.
    """
    if int(n_rows) < 1 or int(n_cols) < 1:
        raise ValueError(f"n_rows and n_cols must be >= 1, got {n_rows} and {n_cols}")
    if not spacing > 0:
        raise ValueError(f"spacing must be > 0, got {spacing}")
    rows = np.repeat(np.arange(int(n_rows), dtype=np.int64), int(n_cols))
    cols = 2 * np.tile(np.arange(int(n_cols), dtype=np.int64), int(n_rows)) + rows % 2
    xy = np.column_stack([cols * (spacing / 2.0), rows * (spacing * math.sqrt(3.0) / 2.0)])
    return rows, cols, xy


@dataclass(frozen=True)
class _Layout:
    """Tissue shape and domain fields of one slide, evaluable at any pixel position."""

    centre: np.ndarray  # (2,) pixel (x, y)
    radius: float  # pixel length of one tissue radius
    rotation: np.ndarray  # (2, 2)
    axes: np.ndarray  # (2,) ellipse semi-axes in tissue radii
    harmonics: np.ndarray  # (3, 2): amplitude, phase of the boundary's 2nd..4th harmonics
    freq: np.ndarray  # (K, M, 2) domain field frequencies (per tissue radius)
    phase: np.ndarray  # (K, M)

    @classmethod
    def draw(cls, rng: np.random.Generator, centre: np.ndarray, radius: float) -> _Layout:
        angle = rng.uniform(0.0, np.pi)
        c, s = math.cos(angle), math.sin(angle)
        aspect = rng.uniform(1.0, 1.5)
        return cls(
            centre=np.asarray(centre, dtype=np.float64),
            radius=float(radius),
            rotation=np.array([[c, s], [-s, c]]),
            axes=np.array([math.sqrt(aspect), 1.0 / math.sqrt(aspect)]),
            harmonics=np.column_stack([rng.uniform(0.0, 0.08, 3), rng.uniform(0.0, 2 * np.pi, 3)]),
            freq=rng.normal(0.0, 1.0 / _DOMAIN_SCALE, (N_DOMAINS, _DOMAIN_FEATURES, 2)),
            phase=rng.uniform(0.0, 2 * np.pi, (N_DOMAINS, _DOMAIN_FEATURES)),
        )

    def units(self, p: np.ndarray) -> np.ndarray:
        """Positions in tissue radii relative to the tissue centre."""
        return (np.asarray(p, dtype=np.float64) - self.centre) / self.radius

    def shape_distance(self, p: np.ndarray) -> np.ndarray:
        """Normalised distance to the tissue centre; the tissue is ``{p: shape_distance(p) <= t}``."""
        q = (self.units(p) @ self.rotation.T) / self.axes
        theta = np.arctan2(q[:, 1], q[:, 0])
        k = np.arange(2, 2 + len(self.harmonics))
        wobble = 1.0 + np.cos(theta[:, None] * k + self.harmonics[:, 1]) @ self.harmonics[:, 0]
        return np.hypot(q[:, 0], q[:, 1]) / wobble

    def domain_weights(self, p: np.ndarray) -> np.ndarray:
        """Soft domain membership ``(m, K)``: softmax of K smooth random fields (rows sum to 1)."""
        u = self.units(p)
        fields = np.empty((u.shape[0], N_DOMAINS))
        for k in range(N_DOMAINS):
            fields[:, k] = np.cos(u @ self.freq[k].T + self.phase[k]).sum(axis=1)
        fields *= _DOMAIN_SHARPNESS * math.sqrt(2.0 / _DOMAIN_FEATURES)
        fields -= fields.max(axis=1, keepdims=True)
        w = np.exp(fields)
        return w / w.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class _GenePrograms:
    """Per-gene truth shared by all slides."""

    log_mean: np.ndarray  # (G,)
    theta: np.ndarray  # (G,) NB size
    role: np.ndarray  # (G,) "domain" | "gradient" | "noise"
    domain_effect: np.ndarray  # (G, K) log-fold per domain
    gradient_index: np.ndarray  # (G,) which gradient field
    gradient_effect: np.ndarray  # (G,) log-fold per unit of the gradient field (0 unless role gradient)

    @classmethod
    def draw(cls, rng: np.random.Generator, n_genes: int) -> _GenePrograms:
        role = np.full(n_genes, "noise", dtype=object)
        order = rng.permutation(n_genes)
        n_dom, n_grad = round(_FRAC_DOMAIN * n_genes), round(_FRAC_GRADIENT * n_genes)
        role[order[:n_dom]] = "domain"
        role[order[n_dom:n_dom + n_grad]] = "gradient"
        is_dom = role == "domain"
        # each domain gene is up in one or two domains (log-fold 1..2.5), slightly varied elsewhere
        up = rng.random((n_genes, N_DOMAINS)).argsort(axis=1) < rng.integers(1, 3, n_genes)[:, None]
        effect = np.where(up, rng.uniform(1.2, 3.0, (n_genes, N_DOMAINS)),
                          rng.normal(0.0, 0.15, (n_genes, N_DOMAINS)))
        gradient_effect = rng.choice([-1.0, 1.0], n_genes) * rng.uniform(0.6, 1.2, n_genes)
        return cls(
            log_mean=rng.normal(_LOG_MEAN, _LOG_MEAN_SD, n_genes),
            theta=np.exp(rng.normal(_LOG_THETA, _LOG_THETA_SD, n_genes)),
            role=role.astype(str),
            domain_effect=np.where(is_dom[:, None], effect, 0.0),
            gradient_index=rng.integers(0, _N_GRADIENTS, n_genes),
            gradient_effect=np.where(role == "gradient", gradient_effect, 0.0),
        )


def make_collection(
    n_slides: int = 4,
    n_spots: int = 1000,
    n_genes: int = 256,
    dropout: float = 0.5,
    seed: int = 0,
    organism: str = "human",
    n_patients: int | None = None,
    spot_diameter_px: float = 24,
    image: bool = True,
    *,
    batch_effect: float = 0.3,
) -> anndata.AnnData:
    """Simulate a Visium collection with known true expression.

    Per slide, ``log λ = log μ_g + Σ_k w_ik β_gk + γ_g f_g(x_i) + log s_i + b_slide,g + l_slide``: gene base
    means ``μ`` (log-normal), soft domain memberships ``w`` times per-domain programs ``β`` (45% of genes),
    a smooth gradient field ``f`` with a gene-specific signed strength ``γ`` (25% of genes; the remaining 30%
    are pure noise), spot library sizes ``s`` and the batch effect ``b``, ``l``. Counts are negative binomial
    with gene-specific dispersion.

    Parameters
    ----------
    n_slides
        Slides (each its own batch).
    n_spots
        Spots under tissue per slide (exact).
    n_genes
        Genes, drawn from the protein-coding genes of the organism's GENCODE annotation.
    dropout
        Maximum zero-inflation probability in ``[0, 1)``; the chance that a true count is lost is
        ``dropout / (1 + λ)``, so lowly expressed genes lose far more.
    seed
        Seed of every random draw; equal arguments give identical collections.
    organism
        ``"human"`` or ``"mouse"``.
    n_patients
        Patients (default one per slide); slides are given to patients in consecutive blocks. With at least
        three patients (or one per slide) splits are assigned per patient, otherwise per slide.
    spot_diameter_px
        Spot diameter in full-resolution pixels; spots are ``100/55`` diameters apart, as in Visium.
    image
        Render an H&E-like image per slide into ``uns["spatial"]``.
    batch_effect
        Standard deviation of the per-slide, per-gene log-factor and of the per-slide log library shift.

    Returns
    -------
    AnnData following the spared raw data model: ``X`` (CSR float32 observed counts),
    ``layers["true_counts"]`` (CSR counts before dropout), ``layers["true_rate"]`` (the expected counts λ,
    dense), ``obs`` (``slide_id``, ``patient``, ``split``,
    ``array_row``, ``array_col``, ``in_tissue``, ``domain``, ``true_size_factor``), ``obsm["spatial"]``,
    ``var`` (``gene_symbol``, ``spatial_role``, ``true_log_mean``, ``true_dispersion``),
    ``varm["true_domain_effect"]``, ``uns["spatial"]`` (images) and ``uns["synthetic"]`` (parameters).
    """
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    n_slides = _check_int(n_slides, "n_slides", 1)
    n_spots = _check_int(n_spots, "n_spots", 10)
    n_genes = _check_int(n_genes, "n_genes", 1)
    n_patients = n_slides if n_patients is None else _check_int(n_patients, "n_patients", 1)
    if n_patients > n_slides:
        raise ValueError(f"n_patients ({n_patients}) cannot exceed n_slides ({n_slides})")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    if organism not in ORGANISMS:
        raise ValueError(f"unknown organism {organism!r}; expected one of {list(ORGANISMS)}")
    if not float(spot_diameter_px) >= 2:
        raise ValueError(f"spot_diameter_px must be >= 2 pixels, got {spot_diameter_px}")
    if not float(batch_effect) >= 0:
        raise ValueError(f"batch_effect must be >= 0, got {batch_effect}")

    gene_ss, batch_ss, *slide_ss = np.random.SeedSequence(seed).spawn(2 + n_slides)
    gene_rng, batch_rng = np.random.default_rng(gene_ss), np.random.default_rng(batch_ss)
    genes = _pick_genes(organism, n_genes, gene_rng)
    programs = _GenePrograms.draw(gene_rng, n_genes)
    batch_gene = batch_rng.normal(0.0, batch_effect, (n_slides, n_genes))
    batch_library = batch_rng.normal(0.0, batch_effect, n_slides)

    slide_ids = [f"slide{i}" for i in range(n_slides)]
    patient_of = np.arange(n_slides) * n_patients // n_slides
    split_of = _assign_splits(patient_of if n_patients >= min(3, n_slides) else np.arange(n_slides))
    spacing = float(spot_diameter_px) * SPACING_PER_DIAMETER

    obs_parts, xy_parts, x_parts, true_parts, rate_parts, spatial = [], [], [], [], [], {}
    for s, ss in enumerate(slide_ss):
        geom_ss, expr_ss, drop_ss, image_ss = ss.spawn(4)
        rows, cols, xy, layout, threshold, size = _slide_geometry(np.random.default_rng(geom_ss), n_spots,
                                                                  spacing)
        weights = layout.domain_weights(xy)
        expr_rng = np.random.default_rng(expr_ss)
        log_size = expr_rng.normal(0.0, _LIBRARY_SD, n_spots)
        log_rate = (programs.log_mean + weights @ programs.domain_effect.T
                    + _gradients(layout, xy)[:, programs.gradient_index] * programs.gradient_effect
                    + log_size[:, None] + batch_gene[s] + batch_library[s])
        rate = np.exp(log_rate)
        theta = programs.theta
        counts = sp.csr_matrix(expr_rng.negative_binomial(theta, theta / (theta + rate)).astype(np.float32))
        true_parts.append(counts)
        rate_parts.append(rate.astype(np.float32))
        x_parts.append(_drop_out(counts, rate, float(dropout), np.random.default_rng(drop_ss)))
        xy_parts.append(xy)
        barcodes = _barcodes(rows, cols)
        obs_parts.append(pd.DataFrame({
            "slide_id": slide_ids[s], "patient": f"patient{patient_of[s]}", "split": split_of[s],
            "array_row": rows, "array_col": cols, "in_tissue": np.ones(n_spots, dtype=np.int64),
            "domain": weights.argmax(axis=1), "true_size_factor": np.exp(log_size),
        }, index=np.char.add(f"{slide_ids[s]}_", barcodes)))
        if image:
            spatial[slide_ids[s]] = _render(np.random.default_rng(image_ss), layout, threshold, size,
                                            float(spot_diameter_px))

    obs = pd.concat(obs_parts)
    for col, cats in (("slide_id", slide_ids), ("patient", [f"patient{p}" for p in range(n_patients)]),
                      ("split", [c for c in ("train", "val", "test") if c in set(split_of)]),
                      ("domain", list(range(N_DOMAINS)))):
        obs[col] = pd.Categorical(obs[col], categories=cats)
    obs["domain"] = obs["domain"].cat.rename_categories([f"domain{k}" for k in range(N_DOMAINS)])
    var = pd.DataFrame({
        "gene_symbol": genes["gene_symbol"].to_numpy(),
        "spatial_role": pd.Categorical(programs.role, categories=["domain", "gradient", "noise"]),
        "true_log_mean": programs.log_mean, "true_dispersion": programs.theta,
    }, index=genes.index.to_numpy())
    adata = ad.AnnData(X=sp.vstack(x_parts, format="csr"), obs=obs, var=var)
    adata.layers["true_counts"] = sp.vstack(true_parts, format="csr")
    adata.layers["true_rate"] = np.concatenate(rate_parts)
    adata.obsm["spatial"] = np.concatenate(xy_parts)
    adata.varm["true_domain_effect"] = programs.domain_effect
    if image:
        adata.uns["spatial"] = spatial
    adata.uns["synthetic"] = {
        "seed": int(seed), "n_slides": n_slides, "n_spots": n_spots, "n_genes": n_genes,
        "dropout": float(dropout), "organism": organism, "n_patients": n_patients,
        "spot_diameter_px": float(spot_diameter_px), "spot_spacing_px": spacing, "n_domains": N_DOMAINS,
        "image": bool(image), "batch_effect": float(batch_effect),
        "batch_gene_log_factor": batch_gene, "batch_library_log_shift": batch_library,
    }
    return adata


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _pick_genes(organism: str, n_genes: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n_genes`` protein-coding genes (all genes when the table has no biotype), sorted by id."""
    from spared.annotation import gene_table

    table = gene_table(organism)
    if "gene_type" in table.columns:
        table = table[table["gene_type"] == "protein_coding"]
    ids = np.sort(table.index.to_numpy().astype(str))
    if n_genes > ids.size:
        raise ValueError(f"n_genes={n_genes} but the {organism} annotation has only {ids.size} usable genes")
    chosen = np.sort(rng.permutation(ids)[:n_genes])
    return table.loc[chosen]


def _assign_splits(unit_of_slide: np.ndarray) -> np.ndarray:
    """Split per slide from its unit (patient or slide): the last units test, the ones before val."""
    units = np.unique(unit_of_slide)
    n = units.size
    n_test = max(1, round(0.2 * n)) if n >= 3 else 0
    n_val = max(1, round(0.2 * n)) if n >= 2 else 0
    split = np.array(["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test)
    return split[np.searchsorted(units, unit_of_slide)]


def _slide_geometry(
    rng: np.random.Generator, n_spots: int, spacing: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Layout, float, tuple[int, int]]:
    """Cut a blob of exactly ``n_spots`` spots out of a hexagonal array; coordinates framed for an image."""
    radius = math.sqrt(n_spots * spacing**2 * math.sqrt(3.0) / 2.0 / math.pi)
    half = 1.9 * radius + spacing
    n_cols = math.ceil(2 * half / spacing) + 1
    n_rows = math.ceil(2 * half / (spacing * math.sqrt(3.0) / 2.0)) + 1
    rows, cols, xy = hex_lattice(n_rows, n_cols, spacing)
    centre = xy.mean(axis=0) + rng.uniform(-0.5, 0.5, 2) * spacing
    layout = _Layout.draw(rng, centre, radius)
    dist = layout.shape_distance(xy)
    keep = np.sort(np.argsort(dist, kind="stable")[:n_spots])
    threshold = float(dist[keep].max())
    margin = 2.0 * spacing
    offset = xy[keep].min(axis=0) - margin
    xy = xy[keep] - offset
    layout = dataclasses.replace(layout, centre=layout.centre - offset)
    size = (math.ceil(xy[:, 1].max() + margin), math.ceil(xy[:, 0].max() + margin))
    return rows[keep], cols[keep], xy, layout, threshold, size


def _gradients(layout: _Layout, xy: np.ndarray) -> np.ndarray:
    """``(n, 3)`` smooth gradient fields standardised over the slide: linear, centre-to-edge, oblique."""
    u = layout.units(xy)
    d0, d1 = layout.rotation[0], layout.rotation[1]
    g = np.column_stack([u @ d0, (u**2).sum(axis=1), np.tanh(1.5 * (u @ (d0 + d1)))])
    return (g - g.mean(axis=0)) / np.maximum(g.std(axis=0), 1e-12)


def _drop_out(counts: sp.csr_matrix, rate: np.ndarray, dropout: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Zero-inflate ``counts`` (CSR): entry lost with probability ``dropout / (1 + (λ/λ0)^κ)``."""
    out = counts.copy()
    if dropout == 0.0 or out.nnz == 0:
        return out
    row = np.repeat(np.arange(out.shape[0]), np.diff(out.indptr))
    lam = rate[row, out.indices]
    p = dropout / (1.0 + (lam / _DROP_HALF) ** _DROP_POWER)
    out.data[rng.random(out.nnz) < p] = 0.0
    out.eliminate_zeros()
    return out


def _barcodes(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Visium-like barcodes (ACGT 16-mers + ``-1``), one per array position, the same on every slide."""
    key = (rows.astype(np.uint64) << np.uint64(16)) | cols.astype(np.uint64)
    code = ((key * np.uint64(2654435761)) ^ np.uint64(0x5BD1E995)) & np.uint64(0xFFFFFFFF)
    shifts = np.arange(30, -1, -2, dtype=np.uint64)
    digits = ((code[:, None] >> shifts) & np.uint64(3)).astype(np.intp)
    letters = np.array(list("ACGT"))[digits]
    return np.char.add(letters.view("<U16").ravel(), "-1")


def _render(rng: np.random.Generator, layout: _Layout, threshold: float, size: tuple[int, int],
            diameter: float) -> dict:
    """H&E-like RGB image: per-domain colour, nuclei-like dots with per-domain density and size, noise."""
    h, w = size
    block = max(2, round(diameter / 3))
    gy, gx = math.ceil(h / block), math.ceil(w / block)
    cy, cx = np.meshgrid((np.arange(gy) + 0.5) * block, (np.arange(gx) + 0.5) * block, indexing="ij")
    centres = np.column_stack([cx.ravel(), cy.ravel()])
    tissue = layout.shape_distance(centres) <= threshold * 1.02
    weights = np.zeros((centres.shape[0], N_DOMAINS))
    weights[tissue] = layout.domain_weights(centres[tissue])
    coarse = np.where(tissue[:, None], weights @ _DOMAIN_RGB, _BACKGROUND_RGB)
    # colours stay within [noise, 255 - noise] so uint8 noise below can never wrap around
    coarse = (np.rint(coarse) - _NOISE).astype(np.uint8).reshape(gy, gx, 3)
    img = np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)[:h, :w].copy()

    # nuclei: candidates on the tissue, kept with the local domain density, stamped as dark disks
    scale = diameter / 24.0
    n_cand = int(tissue.sum() * block**2 / (16.0 * scale**2))
    pos = rng.uniform(0.0, 1.0, (n_cand, 2)) * np.array([w, h])
    cell = (pos[:, 1] // block).astype(np.intp) * gx + (pos[:, 0] // block).astype(np.intp)
    keep = tissue[cell] & (rng.random(n_cand) < weights[cell] @ _NUCLEI_DENSITY)
    pos, cell = pos[keep], cell[keep]
    radius = (weights[cell] @ _NUCLEI_RADIUS) * scale * rng.uniform(0.8, 1.2, pos.shape[0])
    shade = rng.uniform(0.85, 1.15, (pos.shape[0], 1)) * _NUCLEUS_RGB - _NOISE
    r_max = math.ceil(float(radius.max())) if radius.size else 0
    oy, ox = (o.ravel() for o in np.mgrid[-r_max:r_max + 1, -r_max:r_max + 1])
    py = np.clip(np.rint(pos[:, 1]).astype(np.intp), r_max, h - 1 - r_max)
    px = np.clip(np.rint(pos[:, 0]).astype(np.intp), r_max, w - 1 - r_max)
    inside = (oy**2 + ox**2)[None, :] <= radius[:, None] ** 2
    flat = ((py * w + px)[:, None] + (oy * w + ox)[None, :])[inside]
    img.reshape(-1, 3)[flat] = np.rint(shade).astype(np.uint8)[np.repeat(np.arange(pos.shape[0]), inside.sum(1))]

    img += rng.integers(0, 2 * _NOISE + 1, (h, w, 1), dtype=np.uint8)
    step = max(1, math.ceil(max(h, w) / _LOWRES_MAX_SIDE))
    return {
        "images": {"hires": img, "lowres": np.ascontiguousarray(img[::step, ::step])},
        "scalefactors": {"spot_diameter_fullres": float(diameter), "tissue_hires_scalef": 1.0,
                         "tissue_lowres_scalef": 1.0 / step},
        "metadata": {},
    }
