"""Image encoders for `tabst embed`: a registry (:mod:`.registry`) of torchvision ResNets, timm
models (the Crunch 1 quickstarter's ResNet50 and the pathology foundation models UNI, UNI2-h,
H-optimus-0/1, H0-mini, Virchow/Virchow2, Prov-GigaPath) and transformers models (Phikon,
Phikon-v2), plus ``timm:<architecture>`` for any other timm model.

Every encoder takes a ``uint8 [B, H, W, 3]`` tensor (as patches come from disk), normalises it
with its own mean/std and returns ``float32 [B, D]`` pooled as its model card says.

Weights (``weights=``, :mod:`.weights`): ``auto`` (torchvision ImageNet weights for the
torchvision ResNets, the registered hub repo otherwise), ``imagenet`` (torchvision), ``hub`` /
``hf-hub:<repo>``, a local weights file or model folder, or ``random`` (He / timm init from a
fixed seed; recorded and stated in every report).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import TabstError
from .registry import REGISTRY, TIMM_PREFIX, EncoderSpec, names, resolve_spec, slug
from .weights import fit_state, load_transformers, read_state_file, resolve_weights

RANDOM_SEED = 0
#: the torchvision ResNets (name -> spec), the encoders of tabst's first releases
ENCODERS = {k: v for k, v in REGISTRY.items() if v.family == "torchvision"}
LAYERS = ("layer3", "layer4")
#: transformers model class -> (its config class, model kwargs: no pooler head)
HF_CLASSES = {"ViTModel": ("ViTConfig", {"add_pooling_layer": False}),
              "Dinov2Model": ("Dinov2Config", {})}


@dataclass
class EncoderInfo:
    """How an encoder was built (recorded as attrs of the embedding)."""

    encoder: str
    layer: str
    dim: int
    weights: str            # as given: "imagenet", "hub", "random", a file or folder path
    weights_id: str         # e.g. "ResNet50_Weights.IMAGENET1K_V1", "hub:MahmoodLab/UNI", "file"
    weights_sha256: str     # "" for random
    normalisation: str = ""
    extra: dict = field(default_factory=dict)   # family, arch, kwargs, pooling, input size ...


def check_layer(spec: EncoderSpec, layer: str | None) -> str:
    layer = layer or spec.default_layer
    allowed = tuple(spec.layers) if spec.layers else ("final",)
    if layer not in allowed:
        raise TabstError(f"unknown layer {layer!r} for {spec.name}; choose one of "
                         f"{', '.join(allowed)}.")
    return layer


def encoder_dim(encoder: str, layer: str | None = None) -> int:
    """Output dimension of ``encoder`` cut at ``layer`` (registry entries)."""
    spec = resolve_spec(encoder)
    return spec.dim_at(check_layer(spec, layer))


def build_network(spec: EncoderSpec, overrides: dict | None = None):
    """The bare network of ``spec`` (random init), with registry kwargs (+ ``overrides``, e.g.
    ``depth`` for a depth-reduced test twin)."""
    import torch

    from .modules import resolve_kwargs

    kw = resolve_kwargs({**spec.kwargs, **(overrides or {})})
    torch.manual_seed(RANDOM_SEED)
    if spec.family == "torchvision":
        import torchvision.models as tvm

        return getattr(tvm, spec.arch)(weights=None)
    if spec.family == "timm":
        import timm

        return timm.create_model(spec.arch, pretrained=False, **kw)
    if spec.family == "transformers":
        try:
            import transformers
        except ImportError:
            raise TabstError(f"{spec.name} is published for the `transformers` library: "
                             "pip install 'tabst[transformers]'") from None
        cfg_cls, model_kw = HF_CLASSES[spec.arch]
        return getattr(transformers, spec.arch)(getattr(transformers, cfg_cls)(**kw), **model_kw)
    raise TabstError(f"unknown encoder family {spec.family!r}")  # pragma: no cover


def _wrap(net, spec: EncoderSpec, layer: str):
    from .modules import hf_encoder, token_encoder, truncated_cnn

    if spec.layers:
        return truncated_cnn(net, spec, layer)
    if spec.family == "transformers":
        return hf_encoder(net, spec)
    return token_encoder(net, spec)


def _unused(spec: EncoderSpec, layer: str):
    """Keys a weights file may lack or carry that the truncated / pooled encoder never uses."""
    def optional(key: str) -> bool:
        if spec.layers:
            return key.startswith("fc.") or (layer == "layer3" and key.startswith("layer4."))
        return key.startswith(("head.", "fc_norm.", "pooler.", "classifier.", "head_drop."))
    return optional


def build_encoder(encoder: str = "resnet50", layer: str | None = None, weights: str = "auto",
                  expected_sha256: str | None = None, kwargs: dict | None = None,
                  _overrides: dict | None = None):
    """Build ``encoder`` in eval mode on the CPU, parameters frozen.

    Parameters
    ----------
    encoder : a registry name (:data:`registry.REGISTRY`), an alias or ``timm:<architecture>``.
    layer : CNN cut point (``layer3`` / ``layer4``); ``final`` (the default) for transformers.
    weights : ``auto``, ``imagenet`` (or ``imagenet:<ENUM_MEMBER>``), ``hub``,
        ``hf-hub:<repo>``, ``random``, or a local weights file / model folder.
    expected_sha256 : for a weights file, the hash it must have.
    kwargs : builder arguments over the registered ones (``--encoder-kwargs``; timm models).

    Returns
    -------
    (module, EncoderInfo)
    """
    import torch

    spec = resolve_spec(encoder, kwargs)
    layer = check_layer(spec, layer)
    weights = str(weights)
    net = build_network(spec, _overrides)
    if weights == "random":
        wid, digest = f"random(seed={RANDOM_SEED})", ""
    elif spec.family == "torchvision" and (weights in ("auto", "imagenet")
                                           or weights.startswith("imagenet:")):
        from .torchvision_weights import imagenet_state

        state, wid, digest = imagenet_state(spec, "imagenet" if weights == "auto" else weights)
        fit_state(net, state, spec, _unused(spec, layer), source=wid)
    else:
        if spec.family == "torchvision" and (weights == "hub" or weights.startswith("hf")):
            raise TabstError(f"--weights {weights}: {spec.name} is a torchvision model; use "
                             "imagenet, a local file or random (or --encoder resnet50.tv_in1k "
                             "for timm's hub copy).")
        hf = spec.family == "transformers"
        w = resolve_weights(spec, weights, expected_sha256, load=not hf)
        if hf:
            from .modules import resolve_kwargs

            net = load_transformers(spec, w, resolve_kwargs({**spec.kwargs, **(_overrides or {})}),
                                    HF_CLASSES[spec.arch][1])
        else:
            fit_state(net, w.state, spec, _unused(spec, layer), source=w.path or weights)
        wid, digest = w.weights_id, w.sha256
    module = _wrap(net, spec, layer).eval()
    if spec.layers:
        module = module.to(memory_format=torch.channels_last)
    for p in module.parameters():
        p.requires_grad_(False)
    dim = spec.dim_at(layer)
    if spec.pooling == "timm" or not dim:
        dim = _probe_dim(module, spec)
    info = EncoderInfo(
        encoder=spec.name, layer=layer, dim=dim, weights=weights, weights_id=wid,
        weights_sha256=digest, normalisation=spec.normalisation,
        extra={"family": spec.family, "arch": spec.arch, "pooling": pooling_text(spec, layer),
               "input_size": spec.input_size or 0, "mean": list(spec.mean),
               "std": list(spec.std), "kwargs": {**spec.kwargs, **(_overrides or {})},
               "licence": spec.licence, "hub": spec.hub, "gated": spec.gated,
               "cuda_dtype": spec.cuda_dtype, "card": spec.card})
    return module, info


def pooling_text(spec: EncoderSpec, layer: str) -> str:
    return {"avg": f"global average of {layer}", "cls": "CLS token",
            "cls+mean": "CLS token ⊕ mean of patch tokens (prefix/register tokens skipped)",
            "timm": "timm's own head (num_classes=0)"}[spec.pooling]


def _probe_dim(module, spec: EncoderSpec) -> int:
    import torch

    size = spec.input_size or 224
    with torch.inference_mode():
        return int(module(torch.zeros(1, size, size, 3, dtype=torch.uint8)).shape[1])


__all__ = ["ENCODERS", "LAYERS", "REGISTRY", "TIMM_PREFIX", "EncoderInfo", "EncoderSpec",
           "build_encoder", "build_network", "check_layer", "encoder_dim", "names",
           "read_state_file", "resolve_spec", "slug"]
