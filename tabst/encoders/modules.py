"""The ``nn.Module`` wrappers tabst runs: uint8 ``[B, H, W, 3]`` patches in, ``float32 [B, D]``.

Each wrapper converts to float, applies its encoder's mean/std (from the registry) and pools
the encoder's output as the registry says; building the underlying network is left to its
library (torchvision, timm, transformers) with the registered keyword arguments.
"""
from __future__ import annotations

import importlib

from .registry import CALLABLE_KWARGS, EncoderSpec


def resolve_kwargs(kwargs: dict) -> dict:
    """Registry kwargs with import paths (``"timm.layers.SwiGLUPacked"``) replaced by objects."""
    out = dict(kwargs)
    for k in CALLABLE_KWARGS:
        v = out.get(k)
        if isinstance(v, str) and "." in v:
            mod, _, attr = v.rpartition(".")
            out[k] = getattr(importlib.import_module(mod), attr)
    return out


def _base():
    import torch
    from torch import nn

    class PatchEncoder(nn.Module):
        """Normalisation shared by every wrapper (buffers in 0..255 units)."""

        def __init__(self, spec: EncoderSpec, channels_last: bool):
            super().__init__()
            self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0)
            self.channels_last = channels_last

        def prepare(self, x):
            if x.dtype == torch.uint8 and x.shape[-1] == 3:  # [B, H, W, 3] -> NCHW
                x = x.permute(0, 3, 1, 2)
            x = (x.float() - self.mean) / self.std
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            return x.contiguous(memory_format=fmt)

    return torch, PatchEncoder


def truncated_cnn(net, spec: EncoderSpec, layer: str):
    """ResNet stem + ``layer1 .. layer3|4`` + global average pooling (torchvision or timm)."""
    torch, PatchEncoder = _base()

    class TruncatedResNet(PatchEncoder):
        def __init__(self):
            super().__init__(spec, channels_last=True)
            self.conv1, self.bn1, self.maxpool = net.conv1, net.bn1, net.maxpool
            self.relu = getattr(net, "relu", None) or net.act1  # torchvision / timm name
            self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3
            self.layer4 = net.layer4 if layer == "layer4" else None

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(self.prepare(x)))))
            x = self.layer3(self.layer2(self.layer1(x)))
            if self.layer4 is not None:
                x = self.layer4(x)
            return torch.flatten(x.mean(dim=(2, 3)), 1)

    return TruncatedResNet()


def token_encoder(net, spec: EncoderSpec):
    """A timm vision transformer: CLS token, CLS ⊕ mean of patch tokens, or timm's own head."""
    torch, PatchEncoder = _base()
    n_prefix = int(getattr(net, "num_prefix_tokens", 1))

    class TokenEncoder(PatchEncoder):
        def __init__(self):
            super().__init__(spec, channels_last=False)
            self.net = net
            self.pooling = spec.pooling

        def forward(self, x):
            x = self.prepare(x)
            if self.pooling == "timm":
                return torch.flatten(self.net(x), 1).float()
            tokens = self.net.forward_features(x)  # [B, prefix + patches, D], final norm applied
            cls = tokens[:, 0]
            if self.pooling == "cls":
                return cls.float()
            return torch.cat([cls, tokens[:, n_prefix:].mean(dim=1)], dim=-1).float()

    return TokenEncoder()


def hf_encoder(net, spec: EncoderSpec):
    """A transformers ViT / DINOv2 model: CLS token of ``last_hidden_state``."""
    torch, PatchEncoder = _base()

    class HFEncoder(PatchEncoder):
        def __init__(self):
            super().__init__(spec, channels_last=False)
            self.net = net

        def forward(self, x):
            out = self.net(pixel_values=self.prepare(x)).last_hidden_state
            if spec.pooling == "cls":
                return out[:, 0].float()
            return torch.cat([out[:, 0], out[:, 1:].mean(dim=1)], dim=-1).float()

    return HFEncoder()
