"""torchvision's ImageNet weights of the ResNets (``--weights imagenet``): downloaded once into
the torch cache (``$TORCH_HOME/hub/checkpoints``); ``imagenet:IMAGENET1K_V2`` picks another enum
member. Offline without the cached file -> a :class:`TabstError` naming the three remedies."""
from __future__ import annotations

from pathlib import Path

from ..errors import TabstError
from ..util import sha256_file
from .registry import EncoderSpec


def _offline_error(encoder, url, cache_file, err) -> TabstError:
    return TabstError(
        f"cannot get the ImageNet weights of {encoder} ({type(err).__name__}: {err}). "
        "This machine looks offline and the weights are not in the torch cache. Remedies:\n"
        f"  1. connect to the internet once and rerun (the file is cached in {cache_file.parent}),"
        f" or download {url} elsewhere and copy it to {cache_file};\n"
        "  2. --weights PATH: a local state-dict file of the same architecture;\n"
        "  3. --weights random: random weights (embeddings then carry little image information; "
        "recorded in the store and stated in every report).")


def imagenet_state(spec: EncoderSpec, weights: str):
    """(state dict, weights id, sha256) of torchvision's ImageNet weights for ``spec``."""
    import torch
    import torchvision.models as tvm

    member = weights.split(":", 1)[1] if ":" in weights else "IMAGENET1K_V1"
    enum = getattr(tvm, spec.tv_weights)
    try:
        w = enum[member]
    except KeyError:
        raise TabstError(f"--weights {weights}: {spec.tv_weights} has no {member!r} (choose from "
                         f"{', '.join(m.name for m in enum)}).") from None
    url = w.url
    cache_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cache_file.exists():
        try:
            torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True,
                                               map_location="cpu", weights_only=True)
        except Exception as e:  # URLError, HTTPError, OSError, RuntimeError (hash), ...
            raise _offline_error(spec.name, url, cache_file, e) from None
    state = torch.load(cache_file, map_location="cpu", weights_only=True)
    return state, f"{spec.tv_weights}.{member}", sha256_file(cache_file)
