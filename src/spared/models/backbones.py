"""torchvision image backbones with their classifier removed, and the three ways to get their weights.

``weights=None`` builds a randomly initialised network (always works offline). ``"imagenet"`` loads
torchvision's ImageNet weights (from the torch hub cache, or downloaded); when that fails a ``RuntimeError``
says which file to fetch and how to pass it. Any other string is a local file: a ``state_dict`` of the full
torchvision model (as torchvision distributes it, classifier included or not) or of a backbone built here,
read with ``torch.load(path, weights_only=True)``.

Architecture sizes can be overridden (``overrides``) to build tiny networks for tests; pretrained weights then
no longer fit and loading them raises a clear error.
"""

from __future__ import annotations

import re
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
    "shufflenet_v2_x1_0": (tvm.ShuffleNetV2, {"stages_repeats": [4, 8, 4],
                                              "stages_out_channels": [24, 116, 232, 464, 1024]}, "fc"),
    "resnet18": (tvm.ResNet, {"block": tvm.resnet.BasicBlock, "layers": [2, 2, 2, 2]}, "fc"),
    "resnet50": (tvm.ResNet, {"block": tvm.resnet.Bottleneck, "layers": [3, 4, 6, 3]}, "fc"),
}
BACKBONES = tuple(_ARCHS)
Weights = str | Path | None

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
    """

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


def build_backbone(arch: str, weights: Weights = None, **overrides) -> ImageEncoder:
    """Build a torchvision backbone without classifier.

    Parameters
    ----------
    arch
        One of :data:`BACKBONES`.
    weights
        ``None`` (random), ``"imagenet"`` or the path of a local ``state_dict`` file.
    **overrides
        Constructor arguments replacing torchvision's defaults (e.g. ``num_layers`` for ViT).

    Returns
    -------
    The :class:`ImageEncoder`.
    """
    if arch not in _ARCHS:
        raise ValueError(f"unknown backbone {arch!r}; valid: {', '.join(BACKBONES)}")
    cls, defaults, head = _ARCHS[arch]
    net = cls(**{**defaults, **overrides})
    if weights is not None:
        state = _imagenet_state(arch) if str(weights) == "imagenet" else _file_state(weights)
        _load_into(net, state, head, arch, str(weights))
    out_dim = _head_in_features(getattr(net, head))
    setattr(net, head, nn.Identity())
    input_size = net.image_size if isinstance(net, tvm.VisionTransformer) else None
    return ImageEncoder(arch, net, out_dim, input_size)


def _head_in_features(head: nn.Module) -> int:
    linear = head if isinstance(head, nn.Linear) else next(m for m in head.modules() if isinstance(m, nn.Linear))
    return linear.in_features


def _imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    entry = tvm.get_model_weights(arch).DEFAULT
    try:
        return torch.hub.load_state_dict_from_url(entry.url, progress=False, check_hash=True,
                                                   map_location="cpu", weights_only=True)
    except Exception as err:
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise RuntimeError(
            f"could not get the ImageNet weights of {arch} ({type(err).__name__}: {err}). Without internet, "
            f"download {entry.url} on another machine and either put it in {cache} or pass its path as "
            f"backbone_weights='/path/to/{entry.url.rsplit('/', 1)[-1]}'; backbone_weights=None trains from "
            f"random initialisation."
        ) from err


def _file_state(path: Weights) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {path} does not exist (use None, 'imagenet' or a path)")
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

