"""The encoder registry: one :class:`EncoderSpec` per image encoder tabst can build.

Every entry records what its published model card says: the builder (torchvision, timm or
transformers) with its exact keyword arguments, the input size, the normalisation, the pooling
that turns its output into one vector per patch, the output dimension, where the weights come
from (a Hugging Face hub repo, gated or not) and their licence. Builders never branch on an
encoder's name: what differs between models lives here, as data.

``timm:<architecture>`` builds any other timm model (its own pretrained config gives the
normalisation and input size; ``--encoder-kwargs`` passes its arguments).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import TabstError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
RESNET_LAYERS = {"layer3": 1024, "layer4": 2048}
#: avg: global average of a CNN stage; cls: the class token; cls+mean: CLS ⊕ mean of the patch
#: tokens (prefix / register tokens skipped); timm: the model's own head with num_classes=0
POOLINGS = ("avg", "cls", "cls+mean", "timm")
#: import paths that registry kwargs may name (resolved when a model is built)
CALLABLE_KWARGS = ("mlp_layer", "act_layer", "norm_layer")


@dataclass(frozen=True)
class EncoderSpec:
    """One image encoder: how to build it, feed it and pool it, and where its weights are."""

    name: str
    family: str                 # "torchvision" | "timm" | "transformers"
    arch: str                   # torchvision builder / timm architecture / transformers class
    dim: int                    # output dimension (after pooling; default layer for CNNs)
    pooling: str                # avg (CNN stage) | cls | cls+mean (CLS ⊕ mean of patch tokens)
    mean: tuple = IMAGENET[0]
    std: tuple = IMAGENET[1]
    input_size: int | None = None   # px the model expects (patches are resized to it); None = any
    kwargs: dict = field(default_factory=dict)  # builder kwargs, exactly as the model card
    layers: dict | None = None      # CNN cut points -> dim (None: one output, layer "final")
    hub: str = ""                   # Hugging Face repo holding the weights
    hub_files: tuple = ("model.safetensors", "pytorch_model.bin")
    gated: bool = False
    licence: str = ""
    card: str = ""                  # model card / paper the kwargs were read from
    cuda_dtype: str = "float16"     # autocast dtype on CUDA (float16 | bfloat16)
    params_m: float = 0.0           # published parameter count (millions), checked by the tests
    tv_weights: str = ""            # torchvision weights enum (torchvision family)
    aliases: tuple = ()

    @property
    def default_layer(self) -> str:
        return "layer3" if self.layers else "final"

    def dim_at(self, layer: str) -> int:
        return self.layers[layer] if self.layers else self.dim

    @property
    def normalisation(self) -> str:
        kind = "imagenet" if (tuple(self.mean), tuple(self.std)) == IMAGENET else self.name
        return f"{kind}: (x/255 - mean) / std, mean={list(self.mean)}, std={list(self.std)}"


def _tv(name: str, enum: str, layers: dict, params_m: float) -> EncoderSpec:
    return EncoderSpec(name=name, family="torchvision", arch=name, dim=layers["layer3"],
                       pooling="avg", layers=layers, tv_weights=enum, licence="BSD-3-Clause",
                       card="https://pytorch.org/vision/stable/models.html", params_m=params_m)


_SWIGLU = {"mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"}

_ENTRIES = [
    _tv("resnet18", "ResNet18_Weights", {"layer3": 256, "layer4": 512}, 11.7),
    _tv("resnet34", "ResNet34_Weights", {"layer3": 256, "layer4": 512}, 21.8),
    _tv("resnet50", "ResNet50_Weights", RESNET_LAYERS, 25.6),
    _tv("resnet101", "ResNet101_Weights", RESNET_LAYERS, 44.5),
    _tv("resnext50_32x4d", "ResNeXt50_32X4D_Weights", RESNET_LAYERS, 25.0),
    _tv("wide_resnet50_2", "Wide_ResNet50_2_Weights", RESNET_LAYERS, 68.9),
    # timm's copy of torchvision's ImageNet ResNet50 (same keys): the weights of the Crunch 1
    # quickstarter's pytorch_model.bin and of HEST-Benchmark's "resnet50_trunc" (layer3 + GAP)
    EncoderSpec(name="resnet50.tv_in1k", family="timm", arch="resnet50.tv_in1k", dim=1024,
                pooling="avg", layers=RESNET_LAYERS, hub="timm/resnet50.tv_in1k",
                licence="BSD-3-Clause", card="https://huggingface.co/timm/resnet50.tv_in1k",
                params_m=25.6, aliases=("resnet50_tv_in1k", "resnet50-tv-in1k")),
    EncoderSpec(name="uni", family="timm", arch="vit_large_patch16_224", dim=1024, pooling="cls",
                input_size=224, kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5,
                                        "num_classes": 0, "dynamic_img_size": True},
                hub="MahmoodLab/UNI", hub_files=("pytorch_model.bin",), gated=True,
                licence="CC-BY-NC-ND-4.0", card="https://huggingface.co/MahmoodLab/UNI",
                params_m=303.4, aliases=("uni1", "uni-v1")),
    EncoderSpec(name="uni2h", family="timm", arch="vit_giant_patch14_224", dim=1536,
                pooling="cls", input_size=224,
                kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24,
                        "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
                        "num_classes": 0, "no_embed_class": True, **_SWIGLU, "reg_tokens": 8,
                        "dynamic_img_size": True},
                hub="MahmoodLab/UNI2-h", hub_files=("pytorch_model.bin",), gated=True,
                licence="CC-BY-NC-ND-4.0", card="https://huggingface.co/MahmoodLab/UNI2-h",
                cuda_dtype="bfloat16", params_m=681.4, aliases=("uni2-h", "uni2")),
    EncoderSpec(name="hoptimus0", family="timm", arch="vit_giant_patch14_reg4_dinov2",
                dim=1536, pooling="cls", input_size=224, mean=HOPTIMUS[0], std=HOPTIMUS[1],
                kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0,
                        "dynamic_img_size": False},
                hub="bioptimus/H-optimus-0", gated=True, licence="Apache-2.0",
                card="https://huggingface.co/bioptimus/H-optimus-0", params_m=1134.8,
                aliases=("h-optimus-0", "h_optimus_0")),
    EncoderSpec(name="hoptimus1", family="timm", arch="vit_giant_patch14_reg4_dinov2",
                dim=1536, pooling="cls", input_size=224, mean=HOPTIMUS[0], std=HOPTIMUS[1],
                kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0,
                        "dynamic_img_size": False},
                hub="bioptimus/H-optimus-1", gated=True,
                licence="non-commercial (H-optimus-1 licence on the model card)",
                card="https://huggingface.co/bioptimus/H-optimus-1", params_m=1134.8,
                aliases=("h-optimus-1", "h_optimus_1")),
    EncoderSpec(name="h0mini", family="timm", arch="vit_base_patch14_reg4_dinov2", dim=1536,
                pooling="cls+mean", input_size=224, mean=HOPTIMUS[0], std=HOPTIMUS[1],
                kwargs={"img_size": 224, "num_classes": 0, "mlp_ratio": 5.33334, **_SWIGLU},
                hub="bioptimus/H0-mini", gated=True, licence="CC-BY-NC-ND-4.0",
                card="https://huggingface.co/bioptimus/H0-mini", params_m=86.0,
                aliases=("h0-mini", "h0_mini")),
    EncoderSpec(name="virchow", family="timm", arch="vit_huge_patch14_224", dim=2560,
                pooling="cls+mean", input_size=224,
                kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0,
                        "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True,
                        **_SWIGLU},
                hub="paige-ai/Virchow", gated=True, licence="Apache-2.0",
                card="https://huggingface.co/paige-ai/Virchow", params_m=631.2,
                aliases=("virchow1",)),
    EncoderSpec(name="virchow2", family="timm", arch="vit_huge_patch14_224", dim=2560,
                pooling="cls+mean", input_size=224,
                kwargs={"img_size": 224, "init_values": 1e-5, "num_classes": 0,
                        "reg_tokens": 4, "mlp_ratio": 5.3375, "global_pool": "",
                        "dynamic_img_size": True, **_SWIGLU},
                hub="paige-ai/Virchow2", gated=True, licence="CC-BY-NC-ND-4.0",
                card="https://huggingface.co/paige-ai/Virchow2", params_m=631.2),
    EncoderSpec(name="gigapath", family="timm", arch="vit_giant_patch14_dinov2", dim=1536,
                pooling="cls", input_size=224,
                kwargs={"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536,
                        "depth": 40, "num_heads": 24, "init_values": 1e-5,
                        "mlp_ratio": 5.33334, "num_classes": 0},
                hub="prov-gigapath/prov-gigapath", gated=True, licence="Apache-2.0",
                card="https://huggingface.co/prov-gigapath/prov-gigapath", params_m=1134.8,
                aliases=("prov-gigapath", "prov_gigapath")),
    EncoderSpec(name="phikon", family="transformers", arch="ViTModel", dim=768, pooling="cls",
                input_size=224,
                kwargs={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                        "intermediate_size": 3072, "image_size": 224, "patch_size": 16,
                        "layer_norm_eps": 1e-12, "qkv_bias": True},
                hub="owkin/phikon", licence="Owkin non-commercial",
                card="https://huggingface.co/owkin/phikon", params_m=85.8),
    EncoderSpec(name="phikon2", family="transformers", arch="Dinov2Model", dim=1024,
                pooling="cls", input_size=224,
                kwargs={"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                        "mlp_ratio": 4, "image_size": 224, "patch_size": 16,
                        "layerscale_value": 1e-5, "layer_norm_eps": 1e-6},
                hub="owkin/phikon-v2", licence="Owkin non-commercial",
                card="https://huggingface.co/owkin/phikon-v2", params_m=303.4,
                aliases=("phikon-v2", "phikon_v2")),
]

REGISTRY: dict[str, EncoderSpec] = {e.name: e for e in _ENTRIES}
_ALIASES = {a: e.name for e in _ENTRIES for a in e.aliases}
TIMM_PREFIX = "timm:"


def names() -> list[str]:
    return list(REGISTRY) + [TIMM_PREFIX + "<architecture>"]


def resolve_spec(encoder: str, kwargs: dict | None = None) -> EncoderSpec:
    """The spec of ``encoder`` (a registry name, an alias or ``timm:<architecture>``), with
    ``kwargs`` (``--encoder-kwargs``) merged over the registered ones."""
    key = str(encoder).strip()
    kwargs = dict(kwargs or {})
    if key.lower().startswith(TIMM_PREFIX):
        spec = _timm_spec(key[len(TIMM_PREFIX):], kwargs)
    else:
        name = _ALIASES.get(key.lower(), key.lower())
        if name not in REGISTRY:
            raise TabstError(f"unknown encoder {encoder!r}; choose one of {', '.join(names())}.")
        spec = REGISTRY[name]
        if kwargs:
            if spec.family != "timm" or spec.layers:
                raise TabstError(f"--encoder-kwargs: {spec.name} is not a timm vision "
                                 "transformer; its arguments are fixed.")
            spec = replace(spec, kwargs={**spec.kwargs, **kwargs})
    return spec


def _timm_spec(arch: str, kwargs: dict) -> EncoderSpec:
    import timm

    if not arch or not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('.')[0]}*")[:8] if arch else []
        raise TabstError(f"timm has no architecture {arch!r}"
                         + (f" (similar: {', '.join(close)})" if close else "")
                         + "; see timm.list_models().")
    cfg = timm.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    size = int((cfg.get("input_size") or (3, 224, 224))[-1])
    kw = {"num_classes": 0, **kwargs}
    return EncoderSpec(name=TIMM_PREFIX + arch, family="timm", arch=arch, dim=0,
                       pooling="timm",
                       mean=tuple(cfg.get("mean") or IMAGENET[0]),
                       std=tuple(cfg.get("std") or IMAGENET[1]),
                       input_size=None if not cfg.get("fixed_input_size", True) else size,
                       kwargs=kw, hub=str(cfg.get("hf_hub_id") or ""),
                       licence=str(cfg.get("license") or "see the timm model card"),
                       card=f"https://huggingface.co/{cfg.get('hf_hub_id') or 'timm'}")


def slug(spec: EncoderSpec) -> str:
    """Name fragment for embedding names: ``uni2h``, ``resnet50-tv-in1k``, ``vit_small_...``."""
    s = spec.name[len(TIMM_PREFIX):] if spec.name.startswith(TIMM_PREFIX) else spec.name
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in s.lower())


def parse_kwargs(text: str | None) -> dict:
    """``--encoder-kwargs`` JSON -> dict (a clear error for anything else)."""
    import json

    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise TabstError(f"--encoder-kwargs must be a JSON object, e.g. '{{\"img_size\": 224}}' "
                         f"({e})") from None
    if not isinstance(value, dict):
        raise TabstError("--encoder-kwargs must be a JSON object, e.g. '{\"img_size\": 224}'")
    return value


def registry_table():
    """A rich table of the registry (``tabst encoders``)."""
    from rich.table import Table

    t = Table(title="tabst image encoders (tabst embed --encoder NAME)")
    for col in ("name", "library", "architecture", "dim", "pooling", "input", "weights",
                "licence"):
        t.add_column(col)
    for e in REGISTRY.values():
        dims = "/".join(str(v) for v in e.layers.values()) if e.layers else str(e.dim)
        src = ("torchvision ImageNet" if e.family == "torchvision"
               else f"{e.hub}{' (gated)' if e.gated else ''}")
        t.add_row(e.name, e.family, e.arch, dims, e.pooling, f"{e.input_size or 'any'}", src,
                  e.licence)
    t.add_row("timm:<arch>", "timm", "any timm model", "-", "timm", "-", "timm's hf_hub_id",
              "per model")
    return t
