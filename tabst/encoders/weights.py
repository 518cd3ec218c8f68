"""Where an encoder's weights come from, in order of preference, all usable offline:

1. a local file: a ``.bin`` / ``.pth`` / ``.pt`` state dict or a ``.safetensors`` file
   (``{"state_dict": ...}`` wrappers and ``module.`` / ``model.`` style prefixes accepted); its
   sha256 is recorded and checked against ``--weights-sha256`` when given;
2. a local folder holding a timm / Hugging Face model (``config.json`` + ``model.safetensors``
   or ``pytorch_model.bin``); a config naming another architecture is refused;
3. the Hugging Face hub (``hub`` = the registered repo, or ``hf-hub:<repo>``): downloaded once
   into the HF cache (``HF_HOME``), ``HF_TOKEN`` for gated models, ``HF_HUB_OFFLINE=1`` honoured.
   Offline, gated without access or missing -> one message naming the model, its licence /
   gating and the three remedies.

:func:`fit_state` then loads a state dict into a built network, strictly: missing or unexpected
keys and shape mismatches are named, parameters the truncated encoder does not use (a
classifier head, ``layer4`` when cut at ``layer3``) may be absent.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, TabstError
from ..util import sha256_file
from .registry import EncoderSpec

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "teacher", "module")
STRIP_PREFIXES = ("module.", "model.", "backbone.", "encoder.", "trunk.", "vit.", "_orig_mod.")


@dataclass
class Weights:
    """A resolved weights source: the state dict (None for random) and how it was found."""

    state: dict | None
    weights_id: str        # e.g. "hub:MahmoodLab/UNI2-h", "file", "folder", "random(seed=0)"
    sha256: str            # of the weights file ("" for random)
    path: str = ""         # the file read


def is_hub(weights: str) -> bool:
    return weights == "hub" or weights.startswith(("hf-hub:", "hf_hub:"))


def read_state_file(path: Path, expected_sha256: str | None = None,
                    load: bool = True) -> tuple[dict | None, str]:
    """(state dict, sha256) of a weights file; clear errors for a missing, corrupt or foreign
    file. ``load=False`` checks the file and its hash only (state None)."""
    if not path.is_file():
        raise InputError("the weights file does not exist", file=path,
                         fix="give a local weights file or folder, 'hub' or 'random' to --weights")
    digest = sha256_file(path)
    if expected_sha256 and digest.lower() != expected_sha256.strip().lower():
        raise InputError(f"sha256 mismatch: the file has {digest}, expected {expected_sha256}",
                         file=path, fix="the file is corrupt or not the one you meant; "
                                        "re-download it or fix --weights-sha256")
    if not load:
        return None, digest
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"not a loadable weights file ({type(e).__name__}: {e})", file=path,
                         fix="give a state dict saved with torch.save(model.state_dict(), path) "
                             "or a .safetensors file") from None
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict) and len(state) <= 8:
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise InputError("the file does not hold a state dict", file=path,
                         fix="save it with torch.save(model.state_dict(), path)")
    return state, digest


def folder_weights(folder: Path, spec: EncoderSpec, expected_sha256: str | None,
                   load: bool = True):
    """The weights file of a timm / HF model folder, after checking its config.json."""
    cfg_file = folder / "config.json"
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"config.json is not valid JSON ({e})", file=cfg_file) from None
        arch = str(cfg.get("architecture") or "")
        if spec.family == "timm" and arch and arch.split(".")[0] != spec.arch.split(".")[0]:
            raise InputError(f"the folder holds a {arch!r} model, but {spec.name} is "
                             f"{spec.arch!r}", file=cfg_file,
                             fix="choose the encoder that matches the folder (or "
                                 f"--encoder timm:{arch})")
    found = [folder / n for n in FOLDER_FILES if (folder / n).is_file()]
    found += sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES
                    and p not in found)
    if not found:
        raise InputError(f"no weights file in the folder (looked for {', '.join(FOLDER_FILES)} "
                         f"and *{', *'.join(WEIGHT_SUFFIXES)})", file=folder,
                         fix="download the model's files into the folder, or pass the weights "
                             "file itself")
    return read_state_file(found[0], expected_sha256, load) + (found[0],)


def remedies(spec: EncoderSpec, repo: str, why: str) -> TabstError:
    gate = (f"{repo} is gated: request access on https://huggingface.co/{repo}, then log in "
            "(`hf auth login`, or set HF_TOKEN)") if spec.gated else \
        f"{repo} is public: connect once and rerun (the files are cached in the HF cache)"
    return TabstError(
        f"cannot get the weights of {spec.name} from the Hugging Face hub ({why}). Licence: "
        f"{spec.licence or 'see the model card'}; model card: {spec.card or repo}. Remedies:\n"
        f"  1. --weights FILE: a local weights file (.safetensors, .bin or .pth) of {spec.name};\n"
        f"  2. --weights FOLDER: a local folder with the model's config.json and weights "
        f"(e.g. from `hf download {repo} --local-dir FOLDER` on a connected machine);\n"
        f"  3. log in / go online: {gate}. HF_HUB_OFFLINE=1 forbids downloads.\n"
        "  (--weights random gives random weights: for tests only, stated in every report.)")


def hub_weights(spec: EncoderSpec, weights: str, expected_sha256: str | None,
                load: bool = True):
    repo = spec.hub if weights == "hub" else weights.split(":", 1)[1].strip()
    if not repo:
        raise TabstError(f"--weights hub: no Hugging Face repo is registered for {spec.name}; "
                         "give --weights hf-hub:<repo>, a local file or folder, or random.")
    try:
        from huggingface_hub import errors as hf_errors
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a dependency of tabst
        raise TabstError("huggingface_hub is not installed: pip install huggingface_hub") from None
    token = os.environ.get("HF_TOKEN") or None
    why = "not found"
    for fname in spec.hub_files:
        try:
            path = Path(hf_hub_download(repo, fname, token=token))
            return read_state_file(path, expected_sha256, load) + (repo, path)
        except hf_errors.GatedRepoError:
            why = "gated: this account has no access"
            break
        except hf_errors.LocalEntryNotFoundError:
            why = "offline and not in the local HF cache"
        except hf_errors.RepositoryNotFoundError:
            why = "no such repo, or it is gated/private and you are not logged in"
            break
        except hf_errors.EntryNotFoundError:
            continue
        except (hf_errors.HfHubHTTPError, OSError, ValueError) as e:
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    raise remedies(spec, repo, why)


def resolve_weights(spec: EncoderSpec, weights: str, expected_sha256: str | None,
                    load: bool = True) -> Weights:
    """The state dict named by ``--weights`` for a timm / transformers encoder (``load=False``:
    only find and check the file)."""
    w = str(weights)
    if w == "random":
        return Weights(None, "random(seed=0)", "")
    if w in ("auto", "imagenet") or is_hub(w):
        state, digest, repo, path = hub_weights(spec, "hub" if w in ("auto", "imagenet") else w,
                                                expected_sha256, load)
        return Weights(state, f"hub:{repo}", digest, str(path))
    p = Path(w).expanduser()
    if p.is_dir():
        state, digest, f = folder_weights(p, spec, expected_sha256, load)
        return Weights(state, "folder", digest, str(f))
    state, digest = read_state_file(p, expected_sha256, load)
    return Weights(state, "file", digest, str(p))


def _strip(state: dict, model_keys: set) -> dict:
    """Drop wrapper prefixes (``module.``, ``model.`` ...) while that makes more keys fit."""
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    for _ in range(3):
        hits = len(model_keys & set(state))
        best = None
        for pre in STRIP_PREFIXES:
            cand = {(k[len(pre):] if k.startswith(pre) else k): v for k, v in state.items()}
            if len(model_keys & set(cand)) > hits:
                best, hits = cand, len(model_keys & set(cand))
        if best is None:
            break
        state = best
    return state


def fit_state(net, state: dict, spec: EncoderSpec, optional, source: str) -> None:
    """Load ``state`` into ``net`` strictly; ``optional(key)`` names keys that may be absent
    from the file (unused by the truncated encoder) and file keys that may be left over."""
    model_state = net.state_dict()
    state = _strip(state, set(model_state))
    missing = sorted(k for k in set(model_state) - set(state) if not optional(k))
    unexpected = sorted(k for k in set(state) - set(model_state) if not optional(k))
    shapes = sorted(k for k in set(state) & set(model_state)
                    if tuple(state[k].shape) != tuple(model_state[k].shape))
    if missing or unexpected or shapes:
        bits = [f"{len(missing)} missing keys (e.g. {', '.join(missing[:3]) or '-'})",
                f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3]) or '-'})"]
        if shapes:
            k = shapes[0]
            bits.append(f"{len(shapes)} of another shape (e.g. {k}: file "
                        f"{tuple(state[k].shape)}, model {tuple(model_state[k].shape)})")
        raise InputError(f"the weights do not fit {spec.name} ({spec.family} {spec.arch}): "
                         + "; ".join(bits), file=source,
                         fix=f"use weights saved from {spec.family} {spec.arch} with the "
                             "registered arguments (tabst encoders), or choose the matching "
                             "--encoder / --encoder-kwargs")
    keep = {k: v for k, v in state.items() if k in model_state}
    net.load_state_dict(keep, strict=False)


def load_transformers(spec: EncoderSpec, w: Weights, config_kwargs: dict, model_kwargs: dict):
    """A transformers model from a weights file through ``from_pretrained`` (which converts
    the hub's key layout to the installed version's): the file's own folder when it holds a
    config.json, else a temporary folder with the registered config and a link to the file."""
    import tempfile

    import transformers

    from . import HF_CLASSES

    cfg_cls = getattr(transformers, HF_CLASSES[spec.arch][0])
    model_cls = getattr(transformers, spec.arch)
    src = Path(w.path)
    with tempfile.TemporaryDirectory(prefix="tabst-hf-") as tmp:
        cfg_kw = dict(config_kwargs)
        if (src.parent / "config.json").is_file() and w.weights_id == "folder":
            config = cfg_cls.from_pretrained(str(src.parent))
        else:
            config = cfg_cls(**cfg_kw)
        config.save_pretrained(tmp)
        name = "model.safetensors" if src.suffix == ".safetensors" else "pytorch_model.bin"
        os.symlink(src.resolve(), Path(tmp) / name)
        try:
            net, info = model_cls.from_pretrained(tmp, output_loading_info=True, **model_kwargs)
        except Exception as e:
            raise InputError(f"the weights do not fit {spec.name} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:300]})", file=src) from None
    missing = [k for k in info.get("missing_keys", []) if "pooler" not in k]
    unexpected = [k for k in info.get("unexpected_keys", []) if "pooler" not in k]
    bad = info.get("mismatched_keys", [])
    if missing or unexpected or bad:
        raise InputError(f"the weights do not fit {spec.name} (transformers {spec.arch}): "
                         f"{len(missing)} missing keys (e.g. {', '.join(missing[:3]) or '-'}), "
                         f"{len(unexpected)} unexpected, {len(bad)} of another shape",
                         file=src, fix=f"use the weights of {spec.hub or spec.arch}")
    return net
