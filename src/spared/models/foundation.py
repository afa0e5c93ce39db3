"""Frozen pathology foundation encoders for the linear-probe benchmark models (HEST-Benchmark protocol).

Each probe model (``uni_probe``, ``conch_probe``, ``hoptimus0_probe``, ``virchow_probe``, ``resnet50_probe``)
names its encoder in its recipe (``recipes/{model}.toml``): the timm architecture and its keyword arguments, how
an embedding is pooled, the input side and normalisation, and the weight files it expects. The architectures are
built by ``timm`` (CONCH's vision tower adds its attentional pooler, written here because neither timm nor
open_clip ships CONCH's configuration); the weights come from a local file only, never from a model hub:
``weights=PATH``, or ``{weights_dir}/{encoder}/{file}`` with one of the recipe's ``weights_files`` (the name the
model's repository publishes), where ``{encoder}`` is the model name without ``_probe``. ResNet-50 uses
torchvision's ``resnet50-0676ba61.pth`` (found like every other ImageNet file, see
:func:`spared.models.backbones.locate_imagenet`).

:func:`collection_embeddings` embeds every spot of a collection once per encoder and caches the array, keyed by
the encoder's settings, the weight file's sha256 and the patch store; the cache is written atomically.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spared.io.atomic import atomic_path
from spared.models.backbones import WeightsUnavailable, locate_imagenet, sha256_of

#: Channel statistics the batches are normalised with (:mod:`spared.bench.data`).
_BATCH_MEAN = (0.485, 0.456, 0.406)
_BATCH_STD = (0.229, 0.224, 0.225)


class AttentionalPooler(nn.Module):
    """Learned queries attending over the token sequence (CoCa/CONCH's attentional pooling).

    ``out = MultiheadAttention(LN_q(queries), LN_k(tokens), LN_k(tokens))``: ``(B, N, context_dim)`` →
    ``(B, n_queries, d_model)``; parameter names follow CONCH's checkpoint.
    """

    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled queries ``(B, n_queries, d_model)``."""
        keys = self.ln_k(tokens).permute(1, 0, 2)
        query = self.ln_q(self.query).unsqueeze(1).expand(-1, tokens.shape[0], -1)
        return self.attn(query, keys, keys, need_weights=False)[0].permute(1, 0, 2)


class FoundationEncoder(nn.Module):
    """A frozen timm encoder: ImageNet-normalised patches ``(B, 3, H, W)`` → embeddings ``(B, D)``.

    Patches are brought back to ``[0, 1]``, normalised with the encoder's own statistics and resized to its input
    side; the embedding is the model's pooled output (``"model"``), ``[class token, mean of the patch tokens]``
    (``"cls_mean"``, Virchow) or the attentional pooler's single query after a LayerNorm (``"attn_pool"``, CONCH).

    Attributes
    ----------
    name
        Probe model name.
    settings
        The recipe's encoder table (with overrides).
    out_dim
        Embedding width.
    weights_source
        ``"none"`` (random initialisation) or the weight file loaded.
    weights_sha256
        sha256 of that file (``""`` without one).
    """

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        super().__init__()
        import timm

        self.name = name
        self.settings = dict(settings)
        kwargs = dict(settings["kwargs"])
        for key, module in (("mlp_layer", timm.layers), ("act_layer", nn)):
            if isinstance(kwargs.get(key), str):
                kwargs[key] = getattr(module, kwargs[key])
        self.trunk = timm.create_model(settings["arch"], pretrained=False, **kwargs)
        self.pool = settings["pool"]
        self.input_size = int(settings["input_size"])
        if self.pool == "attn_pool":
            width = self.trunk.num_features
            self.attn_pool_contrast = AttentionalPooler(int(settings["pool_dim"]), width,
                                                        int(settings.get("pool_heads", 8)), 1)
            self.ln_contrast = nn.LayerNorm(int(settings["pool_dim"]))
        shift = torch.tensor(_BATCH_MEAN) - torch.tensor(settings["mean"], dtype=torch.float32)
        self.register_buffer("_scale", (torch.tensor(_BATCH_STD) / torch.tensor(settings["std"])).view(1, 3, 1, 1))
        self.register_buffer("_shift", (shift / torch.tensor(settings["std"])).view(1, 3, 1, 1))
        self.weights_source, self.weights_sha256 = "none", ""
        width = self.trunk.num_features
        if settings.get("truncate_after") == "layer3":  # HEST's ResNet-50: the third stage, average-pooled
            width = self.trunk.layer3[-1].conv3.out_channels
            self.trunk.layer4 = nn.Identity()
        self.out_dim = {"model": width, "cls_mean": 2 * width}.get(self.pool, int(settings.get("pool_dim", 0)))
        self.requires_grad_(False).eval()

    def load_weights(self, path: str | Path) -> None:
        """Load a weight file (``.safetensors`` or a torch ``state_dict``); missing or extra tensors are an error."""
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
            state = state["state_dict"]
        prefix = self.settings.get("weights_prefix", "")
        if prefix:
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        target: nn.Module = self if self.pool == "attn_pool" else self.trunk
        own = set(target.state_dict())
        unexpected = [k for k in state if k not in own and not k.startswith(self._ignored())]
        state = {k: v for k, v in state.items() if k in own}
        try:
            missing, _ = target.load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise ValueError(f"{path} does not fit the {self.name} encoder ({self.settings['arch']}): {err}") from err
        missing = [k for k in missing if not k.startswith(("_scale", "_shift"))]
        if missing or unexpected:
            raise ValueError(f"{path} does not match the {self.name} encoder ({self.settings['arch']}): missing "
                             f"{missing[:3]}{'…' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                             f"{'…' if len(unexpected) > 3 else ''}")
        self.weights_source, self.weights_sha256 = str(path), sha256_of(path)

    def _ignored(self) -> tuple[str, ...]:
        """Checkpoint tensors this encoder deliberately leaves out (classifiers, dropped stages, text towers)."""
        if self.pool == "attn_pool":
            return ("attn_pool_caption.", "ln_caption.", "proj_contrast", "head.")
        truncated = self.settings.get("truncate_after")
        return ("fc.", "head.", *(("layer4.",) if truncated == "layer3" else ()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, D)`` of ImageNet-normalised images."""
        x = images * self._scale + self._shift
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        if self.pool == "attn_pool":
            tokens = self.trunk.forward_features(x)
            return self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        out = self.trunk(x)
        if self.pool == "cls_mean":
            prefix = getattr(self.trunk, "num_prefix_tokens", 1)
            return torch.cat([out[:, 0], out[:, prefix:].mean(1)], dim=-1)
        return out


def build_encoder(model: str, weights: str | Path | None = None, weights_dir: str | Path | None = None,
                  encoder: Mapping[str, Any] | None = None) -> FoundationEncoder:
    """The frozen encoder of probe ``model`` with its weights.

    Parameters
    ----------
    model
        A probe model (``spared.models.PROBE_MODELS``).
    weights
        A weight file, ``"none"`` (random initialisation: throughput measurements and tests only), or ``None``
        to look in ``weights_dir`` (see the module docstring).
    weights_dir
        Folder holding ``{encoder}/{file}`` (and torchvision's ResNet-50 file).
    encoder
        Overrides of the recipe's encoder table (e.g. a tiny ``arch``/``kwargs`` for tests).
    """
    from spared.models.recipe import recipe

    rec = recipe(model)
    if rec.kind != "probe":
        raise ValueError(f"{model} is not a linear-probe model")
    settings = {**rec.encoder, **(encoder or {})}
    module = FoundationEncoder(model, settings)
    if weights != "none":
        path = Path(weights) if weights is not None else locate_encoder_weights(model, settings, weights_dir)
        if not path.is_file():
            raise FileNotFoundError(f"{model}: weights file {path} does not exist")
        module.load_weights(path)
    return module


def imagenet_encoder(settings: Mapping[str, Any]) -> bool:
    """Whether the encoder is torchvision's ImageNet ResNet-50 (weights downloaded like the trained models')."""
    return settings["arch"] == "resnet50" and list(settings["weights_files"]) == ["resnet50-0676ba61.pth"]


def locate_encoder_weights(model: str, settings: Mapping[str, Any], weights_dir: str | Path | None) -> Path:
    """The local weight file of ``model``'s encoder, or :class:`WeightsUnavailable` saying where to put it."""
    if imagenet_encoder(settings):
        return locate_imagenet("resnet50", weights_dir)
    folder = model.removesuffix("_probe")
    candidates = [Path(weights_dir) / folder / name for name in settings["weights_files"]] if weights_dir else []
    for path in candidates:
        if path.is_file():
            return path
    where = (f"looked for {', '.join(str(c) for c in candidates)}" if candidates
             else "no --weights-dir / weights_dir was given")
    raise WeightsUnavailable(
        f"{model}: the {settings['arch']} encoder weights are not available locally ({where}). Get "
        f"{' or '.join(settings['weights_files'])} from {settings.get('weights_from', 'its authors')} (its sha256 is "
        f"not published with a checksum we can verify; the load checks every tensor's name and shape), put it in "
        f"WEIGHTS_DIR/{folder}/ and pass --weights-dir WEIGHTS_DIR (or model_config weights=PATH). Weights are "
        f"never downloaded from a model hub."
    )


def collection_embeddings(table: Any, encoder: FoundationEncoder, cache_dir: str | Path, device: str = "cpu",
                          batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Embeddings ``(n_obs, D)`` of every spot of ``table`` (a :class:`~spared.bench.data.SpotTable`), cached.

    The cache file ``{cache_dir}/{model}-{key}.npy`` is keyed by the encoder settings, the weight file's sha256,
    the patch store (path, size, modification time), the spots and the image size; it is written atomically.
    A randomly initialised encoder (no weight file) is never cached.
    """
    key = _cache_key(table, encoder)
    path = Path(cache_dir) / f"{encoder.name}-{key}.npy"
    if key and path.is_file():
        cached = np.load(path, allow_pickle=False)
        if cached.shape == (table.target.shape[0], encoder.out_dim):
            return cached
    encoder = encoder.to(device)
    n = table.target.shape[0]
    out = np.empty((n, encoder.out_dim), dtype=np.float32)
    starts = range(0, n, batch_size)
    if progress:
        from rich.progress import track

        starts = track(starts, description=f"embedding {n} spots with {encoder.name}")
    with torch.no_grad():
        for begin in starts:
            idx = np.arange(begin, min(begin + batch_size, n))
            out[idx] = encoder(table.batch(idx)["image"].to(device)).float().cpu().numpy()
    if not np.isfinite(out).all():
        raise ValueError(f"{encoder.name} produced NaN/inf embeddings; check its weights and input size")
    if key:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, ".npy") as tmp:
            np.save(tmp, out)
    return out


def _cache_key(table: Any, encoder: FoundationEncoder) -> str:
    if not encoder.weights_sha256:
        return ""
    store = Path(getattr(table.store, "path", ""))
    stat = store.stat() if store.is_file() else None
    blob = json.dumps({
        "encoder": encoder.name, "settings": encoder.settings, "weights": encoder.weights_sha256,
        "store": [str(store.resolve()) if stat else "", stat.st_size if stat else 0, stat.st_mtime_ns if stat else 0],
        "spots": hashlib.sha256("\n".join(table.obs_names).encode()).hexdigest(), "image_size": table.image_size,
    }, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
