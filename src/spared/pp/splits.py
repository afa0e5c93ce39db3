"""Which slides are train, val and test: the catalogue's split, or the leave-one-out folds papers use.

A split scheme is a string (``ProcessingConfig.split_scheme``, ``--set split_scheme=...``):

- ``"catalogue"``: the splits the reader assigned (the catalogue's; the default);
- ``"lopo:<patient>"``: leave one patient out, as ST-Net, HisToGene, Hist2ST and their successors evaluate on
  her2st, the ST-Net collection and cSCC: that patient's slides are ``test``, the next patient's (in catalogue
  order, wrapping around) are ``val`` for model selection, every other patient is ``train``;
  ``"lopo:<patient>:<val patient>"`` names the validation patient;
- ``"loso:<slide>"`` / ``"loso:<slide>:<val slide>"``: the same with single slides (leave one section out, the
  HisToGene/Hist2ST protocol; other sections of the held-out patient stay in train).

Assignments are always whole slides, so no slide is shared between splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from spared.inplace import target

KINDS = {"lopo": "patient", "loso": "slide"}


@dataclass(frozen=True)
class SplitScheme:
    """A parsed split scheme: ``kind`` is ``"catalogue"``, ``"lopo"`` or ``"loso"``."""

    kind: str
    test: str | None = None
    val: str | None = None

    def __str__(self) -> str:
        if self.kind == "catalogue":
            return "catalogue"
        return f"{self.kind}:{self.test}" + (f":{self.val}" if self.val else "")


def parse_split_scheme(scheme: str) -> SplitScheme:
    """Parse ``"catalogue"``, ``"lopo:<patient>[:<val>]"`` or ``"loso:<slide>[:<val>]"``; raise ``ValueError``."""
    text = str(scheme).strip()
    if text == "catalogue":
        return SplitScheme("catalogue")
    kind, _, rest = text.partition(":")
    parts = rest.split(":") if rest else []
    if kind not in KINDS or not 1 <= len(parts) <= 2 or not all(p.strip() for p in parts):
        raise ValueError(f"split_scheme {scheme!r} is not valid; expected 'catalogue', 'lopo:<patient>' "
                         f"(optionally 'lopo:<patient>:<val patient>') or 'loso:<slide>[:<val slide>]'")
    return SplitScheme(kind, parts[0].strip(), parts[1].strip() if len(parts) == 2 else None)


def fold_schemes(patients: Sequence[str], slides: Sequence[str], kind: str = "lopo") -> tuple[str, ...]:
    """One scheme per patient (``kind="lopo"``) or slide (``"loso"``), in order of first appearance."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    groups = patients if kind == "lopo" else slides
    return tuple(f"{kind}:{g}" for g in dict.fromkeys(map(str, groups)))


def assign_splits(patients: Sequence[str], slides: Sequence[str], scheme: str | SplitScheme) -> list[str]:
    """The split of each slide under a leave-one-out ``scheme`` (one entry per slide, slides in order).

    Parameters
    ----------
    patients, slides
        Patient and id of each slide (same length, catalogue order).
    scheme
        A ``lopo``/``loso`` scheme (``catalogue`` has no assignment of its own: raise).
    """
    parsed = parse_split_scheme(str(scheme))
    if parsed.kind == "catalogue":
        raise ValueError("the 'catalogue' scheme keeps the splits already assigned; nothing to compute")
    groups_of = [str(g) for g in (patients if parsed.kind == "lopo" else slides)]
    groups = list(dict.fromkeys(groups_of))
    what = KINDS[parsed.kind]
    if parsed.test not in groups:
        raise ValueError(f"split_scheme {str(parsed)!r}: no {what} {parsed.test!r}; the {what}s are "
                         f"{groups}")
    if len(groups) < 3:
        raise ValueError(f"split_scheme {str(parsed)!r} needs at least 3 {what}s (test, val and train), found "
                         f"{len(groups)}: {groups}")
    val = parsed.val if parsed.val is not None else groups[(groups.index(parsed.test) + 1) % len(groups)]
    if val not in groups or val == parsed.test:
        raise ValueError(f"split_scheme {str(parsed)!r}: the validation {what} must be another of {groups}, got "
                         f"{val!r}")
    return ["test" if g == parsed.test else "val" if g == val else "train" for g in groups_of]


def apply_split_scheme(adata, scheme: str, patient_key: str = "patient", slide_key: str = "slide_id",
                       split_key: str = "split", copy: bool = False):
    """Reassign ``obs[split_key]`` of a collection by ``scheme`` (``"catalogue"`` leaves it as is).

    ``copy=True`` writes into a copy and returns it (else ``adata`` is changed and ``None`` returned).
    """
    if parse_split_scheme(scheme).kind == "catalogue":
        return adata.copy() if copy else None
    for key in (patient_key, slide_key):
        if key not in adata.obs:
            raise KeyError(f"obs[{key!r}] is missing; split_scheme {scheme!r} assigns splits by patient and slide")
    obs = adata.obs[[slide_key, patient_key]].astype(str)
    per_slide = obs.drop_duplicates(slide_key)
    mixed = obs.groupby(slide_key, sort=False)[patient_key].nunique()
    if (mixed > 1).any():
        raise ValueError(f"slides {mixed[mixed > 1].index.tolist()} have spots of several patients; "
                         f"split_scheme assigns whole slides")
    splits = assign_splits(per_slide[patient_key].tolist(), per_slide[slide_key].tolist(), scheme)
    lookup = dict(zip(per_slide[slide_key], splits, strict=True))
    values = obs[slide_key].map(lookup).to_numpy(dtype=object)
    adata = target(adata, copy)
    adata.obs[split_key] = pd.Categorical(np.asarray(values, dtype=str))
    return adata if copy else None
