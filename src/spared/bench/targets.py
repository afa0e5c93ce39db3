"""What a model is trained on: the benchmark's targets, each a layer plus the entries its loss uses.

The one vocabulary of targets (used by the loaders, the run spec, the CLI, the results table and the report):

``raw``
    ``c_d_log1p``, loss on the **measured** entries only (``layers["mask"]``): the median-filter fills never enter
    the loss. A stronger baseline than the authors' raw experiment, which the paper did not run.
``median``
    ``c_d_log1p``, loss on **every** entry, adaptive-median-filter fills included: the authors' raw experiment
    (their library's ``robust_loss`` is off by default, SEPAL trains a plain MSE over the layer).
``completed``
    ``c_t_log1p``, loss on **every** entry, the missing ones completed by SpaCKLE.

Scoring never depends on the target: every run is scored on the measured entries of its evaluation split (and,
on simulated data, also on every entry against the known truth, :data:`TRUTH_LAYER`). On measured entries
``c_t_log1p`` equals ``c_d_log1p``, so the three targets are scored against the same values.

A layer name may stand for a target too (:func:`get_target`); ``imputed_weight`` (:func:`loss_entries`) lowers the
loss weight of entries that are not measurements (1: plain MSE over every loss entry; 0: the measured ones only).
Importing this module loads neither torch nor AnnData.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Entries a loss can use: the measured ones only, or every entry of the layer.
LOSS_ENTRIES = ("real", "all")
#: The simulated truth on the processed scale (``spared.synthetic`` collections only).
TRUTH_LAYER = "c_true_log1p"


@dataclass(frozen=True)
class Target:
    """A training target: the absolute layer trained on and the entries its loss uses.

    Attributes
    ----------
    name
        ``"raw"``, ``"median"``, ``"completed"``, or a layer name.
    layer
        Absolute (log) layer the model regresses and is scored against.
    loss_entries
        ``"real"`` (measured entries, ``layers["mask"]``) or ``"all"`` (every entry).
    meaning
        What the target is, in words (the report and ``spared bench --help`` show it).
    """

    name: str
    layer: str
    loss_entries: str
    meaning: str

    def __post_init__(self) -> None:
        if self.loss_entries not in LOSS_ENTRIES:
            raise ValueError(f"target {self.name!r}: loss_entries must be one of {list(LOSS_ENTRIES)}, got "
                             f"{self.loss_entries!r}")
        if "deltas" in self.layer or self.layer in ("mask", "counts"):
            raise ValueError(f"target layer {self.layer!r} is not an absolute expression layer; targets are log "
                             f"layers such as c_d_log1p or c_t_log1p (delta models add the train means themselves)")


#: The benchmark's targets, in the order tables show them.
TARGETS: dict[str, Target] = {
    "raw": Target("raw", "c_d_log1p", "real",
                  "c_d_log1p; the loss uses the measured entries only (median-filter fills left out): a stronger "
                  "baseline than the authors' raw experiment"),
    "median": Target("median", "c_d_log1p", "all",
                     "c_d_log1p; the loss uses every entry, the adaptive-median-filter fills included: the authors' "
                     "raw experiment"),
    "completed": Target("completed", "c_t_log1p", "all",
                        "c_t_log1p; the loss uses every entry, the missing ones completed by SpaCKLE"),
}
TARGET_NAMES: tuple[str, ...] = tuple(TARGETS)
#: The layer of each named target (several targets may share a layer; they differ in their loss entries).
TARGET_LAYERS: dict[str, str] = {name: t.layer for name, t in TARGETS.items()}


def get_target(target: str | Target, loss_entries: str | None = None) -> Target:
    """The :class:`Target` named ``target``: one of :data:`TARGETS`, or an absolute layer name.

    A layer name trains on that layer with, by default, every entry in the loss when the layer is completed
    (``c_t_*``) or the simulated truth, and the measured entries only otherwise (the other layers' unmeasured
    entries are fills or zeros). ``loss_entries`` (``"real"``/``"all"``) chooses for a layer name; a named target
    already fixes its entries.
    """
    if isinstance(target, Target):
        return target
    if not isinstance(target, str) or not target:
        raise ValueError(f"target must be one of {list(TARGETS)} or a layer name, got {target!r}")
    if target in TARGETS:
        named = TARGETS[target]
        if loss_entries not in (None, named.loss_entries):
            raise ValueError(f"target {target!r} uses the {named.loss_entries!r} entries; for another choice name "
                             f"the target whose loss uses {loss_entries!r} entries ({_by_entries(loss_entries)}) or "
                             f"give a layer name")
        return named
    completed = target.startswith("c_t_") or target == TRUTH_LAYER
    entries = loss_entries or ("all" if completed else "real")
    words = "every entry" if entries == "all" else "the measured entries only"
    return Target(target, target, entries, f"layer {target}; the loss uses {words}")


def _by_entries(entries: str | None) -> str:
    return ", ".join(n for n, t in TARGETS.items() if t.loss_entries == entries) or "none"


def check_imputed_weight(value: float) -> float:
    """``value`` as a float, or a ``ValueError`` unless it is a finite number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"imputed_weight must be a finite number >= 0 (1: every loss entry weighs the same; "
                         f"0: measured entries only), got {value!r}")
    return float(value)


def weight_applies(target: str | Target, imputed_weight: float) -> bool:
    """Whether ``imputed_weight`` changes the loss of ``target`` (its loss has unmeasured entries, weight ≠ 1)."""
    return get_target(target).loss_entries == "all" and float(imputed_weight) != 1.0


def loss_entries(mask: np.ndarray, target: str | Target, imputed_weight: float = 1.0
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """The loss entries of ``target`` given the measured entries ``mask``: ``(loss_mask, loss_weight)``.

    ``loss_mask`` (bool, ``mask``'s shape) marks the entries in the loss; ``loss_weight`` (float32) is ``None``
    when every loss entry weighs 1, else 1 on measured entries and ``imputed_weight`` on the others (the loss is
    then the weighted mean). ``imputed_weight = 0`` leaves the unmeasured entries out altogether.
    """
    mask = np.asarray(mask, dtype=bool)
    weight = check_imputed_weight(imputed_weight)
    if get_target(target).loss_entries == "real" or weight == 0.0:
        return mask.copy(), None
    if weight == 1.0:
        return np.ones_like(mask), None
    return np.ones_like(mask), np.where(mask, np.float32(1.0), np.float32(weight))


def target_label(target: str, imputed_weight: float | None = 1.0) -> str:
    """The column label of a target in results tables: its name, with the imputed-entry weight when it applies
    (``"completed w=0.5"``), so that runs with different weights are never averaged together."""
    weight = 1.0 if imputed_weight is None or (isinstance(imputed_weight, float) and math.isnan(imputed_weight)) \
        else float(imputed_weight)
    if target in TARGETS and weight_applies(target, weight):
        return f"{target} w={weight:g}"
    return target


def label_order(labels: list[str] | set[str]) -> list[str]:
    """Target labels in table order: :data:`TARGET_NAMES` first (each followed by its weighted variants), then
    any other label alphabetically."""
    def key(label: str) -> tuple[int, str]:
        base = label.split(" w=", 1)[0]
        return (TARGET_NAMES.index(base) if base in TARGETS else len(TARGETS), label)

    return sorted(set(labels), key=key)


def target_meaning(label: str) -> str:
    """What a target label (:func:`target_label`) means, in words."""
    base, _, weight = label.partition(" w=")
    meaning = TARGETS[base].meaning if base in TARGETS else get_target(base).meaning
    if weight:
        meaning += f", unmeasured entries weighing {weight} (measured ones 1)"
    return meaning
