"""Image encoders: torchvision ResNets cut at ``layer3`` / ``layer4`` + global average pooling.

The encoder takes a ``uint8 [B, H, W, 3]`` tensor (as patches come from disk), converts it to
float, ImageNet-normalises it and runs it in channels_last layout; output ``float32 [B, D]``.

Weights (``weights=``):

- ``"imagenet"``: torchvision's ``<Model>_Weights.IMAGENET1K_V1`` (the weights behind timm's
  ``resnet50.tv_in1k`` used by HEST-Benchmark), downloaded once into the torch cache
  (``$TORCH_HOME/hub/checkpoints``). ``"imagenet:IMAGENET1K_V2"`` picks another enum member.
  Offline without the cached file -> :class:`TabstError` naming the three remedies.
- a path to a local state dict (``torch.save(model.state_dict())``; ``module.``-prefixes and
  ``{"state_dict": ...}`` wrappers accepted); its sha256 is recorded and checked against
  ``expected_sha256`` when given.
- ``"random"``: He-initialised weights from a fixed seed (recorded), only when asked for.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError, TabstError
from .util import sha256_file

#: name -> (torchvision builder, weights enum name, {layer: output dimension})
ENCODERS: dict[str, tuple[str, str, dict]] = {
    "resnet18": ("resnet18", "ResNet18_Weights", {"layer3": 256, "layer4": 512}),
    "resnet34": ("resnet34", "ResNet34_Weights", {"layer3": 256, "layer4": 512}),
    "resnet50": ("resnet50", "ResNet50_Weights", {"layer3": 1024, "layer4": 2048}),
    "resnet101": ("resnet101", "ResNet101_Weights", {"layer3": 1024, "layer4": 2048}),
    "resnext50_32x4d": ("resnext50_32x4d", "ResNeXt50_32X4D_Weights",
                        {"layer3": 1024, "layer4": 2048}),
    "wide_resnet50_2": ("wide_resnet50_2", "Wide_ResNet50_2_Weights",
                        {"layer3": 1024, "layer4": 2048}),
}
LAYERS = ("layer3", "layer4")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALISATION = ("imagenet: (x/255 - mean) / std, mean=[0.485, 0.456, 0.406], "
                 "std=[0.229, 0.224, 0.225]")
RANDOM_SEED = 0


@dataclass
class EncoderInfo:
    """How an encoder was built (recorded as attrs of the embedding)."""

    encoder: str
    layer: str
    dim: int
    weights: str            # "imagenet", "random" or the local file path as given
    weights_id: str         # e.g. "ResNet50_Weights.IMAGENET1K_V1", "random(seed=0)", "file"
    weights_sha256: str     # "" for random
    normalisation: str = NORMALISATION
    extra: dict = field(default_factory=dict)


def encoder_dim(encoder: str, layer: str) -> int:
    """Output dimension of ``encoder`` cut at ``layer``."""
    _check_names(encoder, layer)
    return ENCODERS[encoder][2][layer]


def _check_names(encoder: str, layer: str) -> None:
    if encoder not in ENCODERS:
        raise TabstError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODERS)}.")
    if layer not in LAYERS:
        raise TabstError(f"unknown layer {layer!r}; choose one of {', '.join(LAYERS)}.")


def _make_module():
    import torch
    from torch import nn

    class TruncatedResNet(nn.Module):
        """ResNet stem + ``layer1 .. layerK`` + global average pooling; uint8 NHWC input."""

        def __init__(self, full, layer: str):
            super().__init__()
            self.conv1, self.bn1, self.relu, self.maxpool = full.conv1, full.bn1, full.relu, \
                full.maxpool
            self.layer1, self.layer2, self.layer3 = full.layer1, full.layer2, full.layer3
            self.layer4 = full.layer4 if layer == "layer4" else None
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

        def forward(self, x):
            if x.dtype == torch.uint8 and x.shape[-1] == 3:  # [B, H, W, 3] -> channels_last NCHW
                x = x.permute(0, 3, 1, 2)
            x = x.float()
            x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer3(self.layer2(self.layer1(x)))
            if self.layer4 is not None:
                x = self.layer4(x)
            return torch.flatten(x.mean(dim=(2, 3)), 1)

    return TruncatedResNet


def _offline_error(encoder, url, cache_file, err) -> TabstError:
    return TabstError(
        f"cannot get the ImageNet weights of {encoder} ({type(err).__name__}: {err}). "
        "This machine looks offline and the weights are not in the torch cache. Remedies:\n"
        f"  1. connect to the internet once and rerun (the file is cached in {cache_file.parent}),"
        f" or download {url} elsewhere and copy it to {cache_file};\n"
        "  2. --weights PATH: a local state-dict file of the same architecture;\n"
        "  3. --weights random: random weights (embeddings then carry little image information; "
        "recorded in the store and stated in every report).")


def _imagenet_state(encoder: str, weights: str):
    import torch
    import torchvision.models as tvm

    enum_name = ENCODERS[encoder][1]
    member = weights.split(":", 1)[1] if ":" in weights else "IMAGENET1K_V1"
    enum = getattr(tvm, enum_name)
    try:
        w = enum[member]
    except KeyError:
        raise TabstError(f"--weights {weights}: {enum_name} has no {member!r} (choose from "
                         f"{', '.join(m.name for m in enum)}).") from None
    url = w.url
    cache_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cache_file.exists():
        try:
            torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True,
                                               map_location="cpu", weights_only=True)
        except Exception as e:  # URLError, HTTPError, OSError, RuntimeError (hash), ...
            raise _offline_error(encoder, url, cache_file, e) from None
    state = torch.load(cache_file, map_location="cpu", weights_only=True)
    return state, f"{enum_name}.{member}", sha256_file(cache_file)


def _file_state(path: Path, expected_sha256: str | None):
    import torch

    if not path.is_file():
        raise InputError("the weights file does not exist", file=path,
                         fix="give a local state-dict file, 'imagenet' or 'random' to --weights")
    digest = sha256_file(path)
    if expected_sha256 and digest.lower() != expected_sha256.strip().lower():
        raise InputError(f"sha256 mismatch: the file has {digest}, expected {expected_sha256}",
                         file=path, fix="the file is corrupt or not the one you meant; "
                                        "re-download it or fix --weights-sha256")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"not a loadable PyTorch state dict ({type(e).__name__}: {e})", file=path,
                         fix="save it with torch.save(model.state_dict(), path)") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InputError("the file does not hold a state dict", file=path,
                         fix="save it with torch.save(model.state_dict(), path)")
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    return state, digest


def build_encoder(encoder: str = "resnet50", layer: str = "layer3", weights: str = "imagenet",
                  expected_sha256: str | None = None):
    """Build a truncated torchvision ResNet in eval mode on CPU.

    Parameters
    ----------
    encoder : one of :data:`ENCODERS`.
    layer : ``"layer3"`` or ``"layer4"`` (output of that stage, globally average-pooled).
    weights : ``"imagenet"`` (or ``"imagenet:<ENUM_MEMBER>"``), ``"random"``, or a file path.
    expected_sha256 : for a weights file, the hash it must have.

    Returns
    -------
    (module, EncoderInfo)
    """
    import torch
    import torchvision.models as tvm

    _check_names(encoder, layer)
    builder, _, dims = ENCODERS[encoder]
    weights = str(weights)
    if weights == "random":
        torch.manual_seed(RANDOM_SEED)
        full = getattr(tvm, builder)(weights=None)
        wid, digest = f"random(seed={RANDOM_SEED})", ""
    else:
        full = getattr(tvm, builder)(weights=None)
        if weights == "imagenet" or weights.startswith("imagenet:"):
            state, wid, digest = _imagenet_state(encoder, weights)
        else:
            state, digest = _file_state(Path(weights), expected_sha256)
            wid = "file"
        model_keys = set(full.state_dict())
        missing = sorted(model_keys - set(state))
        unexpected = sorted(set(state) - model_keys)
        needed_missing = [k for k in missing if not _cut_away(k, layer)]
        if needed_missing or unexpected:
            raise InputError(
                f"the weights do not fit {encoder}: {len(needed_missing)} missing keys "
                f"(e.g. {', '.join(needed_missing[:3]) or '-'}), {len(unexpected)} unexpected "
                f"(e.g. {', '.join(unexpected[:3]) or '-'})", file=weights,
                fix=f"use a state dict saved from torchvision.models.{builder}")
        try:
            full.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise InputError(f"the weights do not fit {encoder}: {e}", file=weights) from None
    module = _make_module()(full, layer).eval()
    module = module.to(memory_format=torch.channels_last)
    for p in module.parameters():
        p.requires_grad_(False)
    return module, EncoderInfo(encoder=encoder, layer=layer, dim=dims[layer], weights=weights,
                               weights_id=wid, weights_sha256=digest)


def _cut_away(key: str, layer: str) -> bool:
    """Parameters not used by the truncated model (may be missing from a weights file)."""
    return key.startswith("fc.") or (layer == "layer3" and key.startswith("layer4."))
