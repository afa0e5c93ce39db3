"""torchvision image backbones with their classifier removed, and where their weights come from.

``weights`` is ``"none"`` (or ``None``: random initialisation, always offline), ``"imagenet"`` or the path of a
local file. ``"imagenet"`` means the ImageNet weights the models' authors used: torchvision's ``IMAGENET1K_V1``
file of the architecture (:data:`IMAGENET_FILES`). It is looked for in ``weights_dir`` (when given), then in the
torch hub cache (``$TORCH_HOME/hub/checkpoints``), then downloaded into that cache; a file found or downloaded is
checked against its sha256 (the full digest where it is recorded, otherwise the digest prefix torchvision puts
in the file name, as ``torch.hub`` does). When none of this works, :class:`WeightsUnavailable` names the file, its
URL, its checksum and where to put it. Files are read with ``torch.load(path, weights_only=True)``: a
``state_dict`` of the full torchvision model (as torchvision distributes it, classifier included or not) or of a
backbone built here.

Architecture sizes can be overridden (``overrides``) to build tiny networks for tests; pretrained weights then
no longer fit and loading them raises a clear error.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

# arch -> (constructor, default keyword arguments, name of the classifier attribute)
_ARCHS: dict[str, tuple[type[nn.Module], dict, str]] = {
    "densenet121": (tvm.DenseNet, {"growth_rate": 32, "block_config": (6, 12, 24, 16),
                                   "num_init_features": 64}, "classifier"),
    "vit_b_16": (tvm.VisionTransformer, {"image_size": 224, "patch_size": 16, "num_layers": 12, "num_heads": 12,
                                         "hidden_dim": 768, "mlp_dim": 3072}, "heads"),
    "shufflenet_v2_x0_5": (tvm.ShuffleNetV2, {"stages_repeats": [4, 8, 4],
                                              "stages_out_channels": [24, 48, 96, 192, 1024]}, "fc"),
    "shufflenet_v2_x1_0": (tvm.ShuffleNetV2, {"stages_repeats": [4, 8, 4],
                                              "stages_out_channels": [24, 116, 232, 464, 1024]}, "fc"),
    "resnet18": (tvm.ResNet, {"block": tvm.resnet.BasicBlock, "layers": [2, 2, 2, 2]}, "fc"),
    "resnet50": (tvm.ResNet, {"block": tvm.resnet.Bottleneck, "layers": [3, 4, 6, 3]}, "fc"),
}
BACKBONES = tuple(_ARCHS)
Weights = str | Path | None
#: The spellings of "no pretrained weights".
NO_WEIGHTS = (None, "none")

#: Full sha256 of torchvision weight files where it is on record (torchvision itself publishes only the prefix
#: in each file name). resnet50-0676ba61.pth: 102,530,333 bytes.
_SHA256 = {
    "resnet50-0676ba61.pth": "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a",
}


@dataclass(frozen=True)
class WeightFile:
    """One released weight file: where it comes from and how to check it."""

    arch: str
    version: str
    url: str

    @property
    def name(self) -> str:
        """File name (as torch hub stores it)."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256(self) -> str | None:
        """Full sha256 digest when recorded, else ``None`` (only :attr:`hash_prefix` is known)."""
        return _SHA256.get(self.name)

    @property
    def hash_prefix(self) -> str:
        """The digest prefix torchvision embeds in the file name (``torch.hub`` checks the same)."""
        match = re.search(r"-([a-f0-9]+)\.", self.name)
        return match.group(1) if match else ""

    def checksum_text(self) -> str:
        """The sha256 as a reader can check it."""
        return self.sha256 or f"{self.hash_prefix}… (torchvision publishes only this prefix of the sha256)"


class WeightsUnavailable(RuntimeError):
    """Pretrained weights that cannot be found, fetched or verified (the message says what to do)."""


def imagenet_file(arch: str) -> WeightFile:
    """torchvision's ``IMAGENET1K_V1`` weight file of ``arch`` (the version the models' authors used)."""
    if arch not in _ARCHS:
        raise ValueError(f"unknown backbone {arch!r}; valid: {', '.join(BACKBONES)}")
    entry = tvm.get_model_weights(arch).IMAGENET1K_V1
    return WeightFile(arch, "IMAGENET1K_V1", entry.url)


def hub_checkpoints() -> Path:
    """The torch hub cache folder of weight files (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path: str | Path) -> str:
    """Hex sha256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate_imagenet(arch: str, weights_dir: str | Path | None = None, download: bool = True) -> Path:
    """Path of the verified ImageNet weight file of ``arch``: from ``weights_dir``, the hub cache, or downloaded.

    Raises
    ------
    WeightsUnavailable
        When the file is nowhere to be found and cannot be downloaded, naming the file, URL, sha256 and folders.
    ValueError
        When a file of that name exists but its checksum differs.
    """
    file = imagenet_file(arch)
    folders = ([Path(weights_dir)] if weights_dir is not None else []) + [hub_checkpoints()]
    for folder in folders:
        if (folder / file.name).is_file():
            return _verified(folder / file.name, file)
    error: Exception | None = None
    if download:
        from spared.io.atomic import DiskFullError

        try:
            return _download(file)
        except DiskFullError:
            raise  # not a missing file: the folder's device is full, and the message says so
        except Exception as err:  # any network or checksum failure ends in the same instructions
            error = err
    places = " or ".join(str(f) for f in folders)
    raise WeightsUnavailable(
        f"the ImageNet weights of {arch} ({file.version}) are not available"
        f"{f' ({type(error).__name__}: {error})' if error else ''}. Download {file.url} on a machine with "
        f"internet (file {file.name}, sha256 {file.checksum_text()}) and put it in {places} (the torch hub cache "
        f"or a folder given as --weights-dir / weights_dir=...); --backbone-weights none (backbone_weights='none') "
        f"trains from random initialisation instead."
    ) from error


def _verified(path: Path, file: WeightFile) -> Path:
    digest = sha256_of(path)
    ok = digest == file.sha256 if file.sha256 else digest.startswith(file.hash_prefix)
    if not ok:
        raise ValueError(f"{path} is not torchvision's {file.name}: its sha256 is {digest}, expected "
                         f"{file.checksum_text()}; delete it and fetch {file.url} again")
    return path


def _download(file: WeightFile) -> Path:
    from spared.io.atomic import full_disk_errors

    folder = hub_checkpoints()
    folder.mkdir(parents=True, exist_ok=True)
    with full_disk_errors(folder, f"downloading {file.name}"), tempfile.TemporaryDirectory(dir=folder) as tmp:
        partial = Path(tmp) / file.name
        torch.hub.download_url_to_file(file.url, str(partial), progress=False)
        _verified(partial, file)
        return partial.replace(folder / file.name)


# torchvision's released DenseNet files use the pre-0.4 key names ("norm.1" instead of "norm1")
_LEGACY_DENSENET = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
                              r"running_var|num_batches_tracked))$")


class ImageEncoder(nn.Module):
    """A torchvision network without its classifier: images ``(B, 3, H, W)`` → features ``(B, out_dim)``.

    Attributes
    ----------
    arch
        torchvision architecture name.
    out_dim
        Feature dimension.
    input_size
        Fixed input side the network needs (ViT), or ``None``; other sizes are resized bilinearly.
    weights_source
        ``"none"`` (random initialisation) or the weight file that was loaded.
    """

    weights_source: str = "none"

    def __init__(self, arch: str, net: nn.Module, out_dim: int, input_size: int | None) -> None:
        super().__init__()
        self.arch = arch
        self.net = net
        self.out_dim = out_dim
        self.input_size = input_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features of ``images``."""
        if self.input_size is not None and images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False)
        return self.net(images)


def build_backbone(arch: str, weights: Weights = None, weights_dir: str | Path | None = None,
                   **overrides) -> ImageEncoder:
    """Build a torchvision backbone without classifier.

    Parameters
    ----------
    arch
        One of :data:`BACKBONES`.
    weights
        ``"none"``/``None`` (random), ``"imagenet"`` (see :func:`locate_imagenet`) or the path of a local
        ``state_dict`` file.
    weights_dir
        Folder searched first for the ImageNet file.
    **overrides
        Constructor arguments replacing torchvision's defaults (e.g. ``num_layers`` for ViT).

    Returns
    -------
    The :class:`ImageEncoder`; its ``weights_source`` says what was loaded (``"none"`` or a file path).
    """
    if arch not in _ARCHS:
        raise ValueError(f"unknown backbone {arch!r}; valid: {', '.join(BACKBONES)}")
    cls, defaults, head = _ARCHS[arch]
    net = cls(**{**defaults, **overrides})
    source = "none"
    if weights not in NO_WEIGHTS:
        path = locate_imagenet(arch, weights_dir) if str(weights) == "imagenet" else Path(weights)
        _load_into(net, _file_state(path), head, arch, str(path))
        source = str(path)
    out_dim = _head_in_features(getattr(net, head))
    setattr(net, head, nn.Identity())
    input_size = net.image_size if isinstance(net, tvm.VisionTransformer) else None
    encoder = ImageEncoder(arch, net, out_dim, input_size)
    encoder.weights_source = source
    return encoder


def check_no_backbone(model: str, weights: Weights) -> None:
    """For models without a pretrained image backbone (HisToGene, Hist2ST): accept ``"none"``/``None`` and
    ``"imagenet"`` (the benchmark default, which then has nothing to load); reject a weights file."""
    if weights not in (*NO_WEIGHTS, "imagenet"):
        raise ValueError(f"{model} has no pretrained image backbone (its patches are embedded by layers trained "
                         f"from scratch), so the weights file {weights} cannot be used; pass 'none' or 'imagenet'")


def _head_in_features(head: nn.Module) -> int:
    linear = head if isinstance(head, nn.Linear) else next(m for m in head.modules() if isinstance(m, nn.Linear))
    return linear.in_features


def _file_state(path: Weights) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {path} does not exist (use 'none', 'imagenet' or a path)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state_dict (got {type(state).__name__})")
    return state


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], head: str, arch: str, source: str) -> None:
    """Load ``state`` into ``net``: keys may carry an ``net.`` prefix, legacy DenseNet names, or lack the head."""
    fixed = {}
    for key, value in state.items():
        key = key.removeprefix("net.")
        fixed[_LEGACY_DENSENET.sub(r"\1\2", key)] = value
    own = net.state_dict()
    bad = [k for k, v in fixed.items() if k in own and own[k].shape != v.shape and not k.startswith(head + ".")]
    if bad:
        raise ValueError(f"weights from {source} do not fit this {arch} (shape mismatch at {bad[0]}); "
                         f"pretrained weights need the default architecture sizes")
    fixed = {k: v for k, v in fixed.items() if not (k.startswith(head + ".") and own.get(k, v).shape != v.shape)}
    missing, unexpected = net.load_state_dict(fixed, strict=False)
    missing = [k for k in missing if not k.startswith(head + ".")]
    unexpected = [k for k in unexpected if not k.startswith(head + ".")]
    if missing or unexpected:
        raise ValueError(f"weights from {source} do not match {arch}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")

