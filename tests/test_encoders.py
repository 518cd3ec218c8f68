"""The encoder registry: every entry's architecture, output dim and pooling, and every weights
path (file, safetensors, folder, hub offline), without downloads."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tabst.encoders import REGISTRY, build_encoder, build_network, resolve_spec
from tabst.encoders.batching import cpu_batch_size
from tabst.encoders.registry import parse_kwargs
from tabst.errors import InputError, TabstError

torch.set_num_threads(1)
TWIN_DEPTH = {"timm": {"depth": 1}, "transformers": {"num_hidden_layers": 1}}
VIT_ENTRIES = [n for n, e in REGISTRY.items() if e.family != "torchvision" and not e.layers]


def patches(n=2, size=224, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_entry_builds_at_its_real_architecture(name):
    """The registered kwargs give the published model: parameter count within 1.5 % (built on
    the meta device: no memory, no init time, so the 1.1 B-parameter giants are checked too)."""
    spec = REGISTRY[name]
    with torch.device("meta"):
        net = build_network(spec)
    n = sum(p.numel() for p in net.parameters()) / 1e6
    if spec.layers:  # CNNs: the count includes the ImageNet classifier the encoder cuts away
        assert abs(n - spec.params_m) / spec.params_m < 0.015, (name, n)
    else:
        assert abs(n - spec.params_m) / spec.params_m < 0.015, (name, n)
    assert spec.licence and spec.card and (spec.hub or spec.family == "torchvision")


@pytest.mark.parametrize("name", VIT_ENTRIES)
def test_depth_reduced_twin_outputs_registered_dim_and_pooling(name):
    """Same kwargs as the real model but one block: the output dim and pooling are those of the
    registry (the dim does not depend on depth)."""
    spec = REGISTRY[name]
    over = TWIN_DEPTH[spec.family]
    m, info = build_encoder(name, weights="random", _overrides=over)
    x = patches(2, spec.input_size)
    with torch.inference_mode():
        out = m(x)
    assert out.shape == (2, spec.dim) == (2, info.dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    z = (x.permute(0, 3, 1, 2).float() / 255 - torch.tensor(spec.mean).view(1, 3, 1, 1)) \
        / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():  # the pooling, recomputed from the library's own outputs
        if spec.family == "transformers":
            tok = m.net(pixel_values=z).last_hidden_state
            n_prefix = 1
        else:
            tok = m.net.forward_features(z)
            n_prefix = m.net.num_prefix_tokens
    ref = tok[:, 0] if spec.pooling == "cls" else torch.cat([tok[:, 0],
                                                             tok[:, n_prefix:].mean(1)], -1)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    if spec.family == "timm" and spec.pooling == "cls":  # = timm's forward with num_classes=0
        with torch.inference_mode():
            assert torch.allclose(out, m.net(z), atol=1e-4, rtol=1e-4)


def test_register_tokens_are_skipped_in_cls_mean():
    """Virchow2 (4 register tokens) averages the 256 patch tokens only, as its card says."""
    m, _ = build_encoder("virchow2", weights="random", _overrides={"depth": 1})
    assert m.net.num_prefix_tokens == 5
    m, _ = build_encoder("h0mini", weights="random", _overrides={"depth": 1})
    assert m.net.num_prefix_tokens == 5


def _tiny_timm(seed=7):
    import timm

    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)


def test_timm_weights_file_safetensors_and_folder_are_bit_identical(tmp_path):
    from safetensors.torch import save_file

    net = _tiny_timm()
    state = net.state_dict()
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "w.bin")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224",
                                                    "num_classes": 0}))
    x = patches(3)
    outs = []
    for w in (tmp_path / "w.bin", tmp_path / "w.safetensors", folder):
        m, info = build_encoder("timm:vit_tiny_patch16_224", weights=str(w))
        with torch.inference_mode():
            outs.append(m(x))
        assert info.dim == 192 and info.weights_id in ("file", "folder")
    with torch.inference_mode():
        mean = torch.tensor((0.5, 0.5, 0.5)).view(1, 3, 1, 1)
        ref = net.eval()((x.permute(0, 3, 1, 2).float() / 255 - mean) / mean)
    for o in outs:
        assert torch.equal(o, outs[0])
    assert torch.allclose(outs[0], ref, atol=1e-5)
    assert not torch.equal(outs[0], build_encoder("timm:vit_tiny_patch16_224", weights="random")
                           [0](x))


def test_registry_entry_loads_its_own_state_dict(tmp_path):
    """A file saved from the registered architecture (a one-block UNI twin) loads and gives the
    same embedding as the network it came from; the sha256 is checked when given."""
    a, _ = build_encoder("uni", weights="random", _overrides={"depth": 1})
    torch.save(a.net.state_dict(), tmp_path / "pytorch_model.bin")
    b, info = build_encoder("uni", weights=str(tmp_path / "pytorch_model.bin"),
                            _overrides={"depth": 1})
    x = patches(2)
    with torch.inference_mode():
        assert torch.equal(a(x), b(x))
    assert len(info.weights_sha256) == 64
    with pytest.raises(InputError, match="sha256 mismatch"):
        build_encoder("uni", weights=str(tmp_path / "pytorch_model.bin"),
                      expected_sha256="0" * 64, _overrides={"depth": 1})


def test_mismatched_weights_name_the_keys(tmp_path):
    torch.save(_tiny_timm().state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(InputError, match=r"do not fit uni .*another shape"):
        build_encoder("uni", weights=str(tmp_path / "tiny.pth"), _overrides={"depth": 1})
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(InputError, match="missing keys"):
        build_encoder("timm:vit_tiny_patch16_224", weights=str(tmp_path / "foreign.pth"))
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a loadable weights file"):
        build_encoder("timm:vit_tiny_patch16_224", weights=str(tmp_path / "junk.bin"))
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet18"}))
    with pytest.raises(InputError, match="holds a 'resnet18' model"):
        build_encoder("timm:vit_tiny_patch16_224", weights=str(folder))


def test_crunch_quickstarter_resnet50_bin_loads_as_is(tmp_path):
    """The Crunch 1 quickstarter ships timm's resnet50.tv_in1k state dict (fc included) as
    pytorch_model.bin: it loads into the timm entry and the torchvision resnet50 alike, and both
    give the same layer3 embedding."""
    import timm

    torch.manual_seed(3)
    full = timm.create_model("resnet50.tv_in1k", pretrained=False)
    torch.save(full.state_dict(), tmp_path / "pytorch_model.bin")
    a, ia = build_encoder("resnet50.tv_in1k", "layer3", str(tmp_path / "pytorch_model.bin"))
    b, ib = build_encoder("resnet50", "layer3", str(tmp_path / "pytorch_model.bin"))
    x = patches(2, 32)
    with torch.inference_mode():
        assert torch.allclose(a(x), b(x), atol=1e-5)
    assert ia.dim == ib.dim == 1024


def test_offline_hub_gives_the_remedies(tmp_path):
    code = ("from tabst.encoders import build_encoder\n"
            "from tabst.errors import TabstError\n"
            "try:\n    build_encoder('uni2h', weights='hub', _overrides={'depth': 1})\n"
            "except TabstError as e:\n    print(e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120).stdout
    for bit in ("uni2h", "MahmoodLab/UNI2-h", "gated", "CC-BY-NC-ND-4.0", "offline",
                "--weights FILE", "--weights FOLDER", "HF_TOKEN", "HF_HUB_OFFLINE"):
        assert bit in out, (bit, out)


def test_names_kwargs_and_batch_sizes():
    with pytest.raises(TabstError, match="unknown encoder"):
        resolve_spec("vgg16")
    with pytest.raises(TabstError, match="timm has no architecture"):
        resolve_spec("timm:not_a_model_xyz")
    assert resolve_spec("UNI2-h").name == "uni2h" and resolve_spec("h-optimus-0").name == \
        "hoptimus0"
    assert resolve_spec("timm:vit_small_patch16_224", {"img_size": 112}).kwargs["img_size"] == 112
    with pytest.raises(TabstError, match="JSON object"):
        parse_kwargs("[1, 2]")
    with pytest.raises(TabstError, match="fixed"):
        resolve_spec("phikon", {"x": 1})
    with pytest.raises(TabstError, match="unknown layer"):
        build_encoder("uni", "layer3", "random", _overrides={"depth": 1})
    assert cpu_batch_size(32) == 256 and cpu_batch_size(224) == 16


def test_phikon_folder_from_save_pretrained(tmp_path):
    """A Hugging Face folder (save_pretrained: config.json + model.safetensors) of a transformers
    ViT loads through the folder path and gives the embedding of the model it came from."""
    a, _ = build_encoder("phikon", weights="random", _overrides={"num_hidden_layers": 1})
    a.net.save_pretrained(tmp_path / "phikon")
    b, info = build_encoder("phikon", weights=str(tmp_path / "phikon"),
                            _overrides={"num_hidden_layers": 1})
    x = patches(2)
    with torch.inference_mode():
        assert torch.equal(a(x), b(x))
    assert info.weights_id == "folder" and np.isclose(info.dim, 768)


def test_embed_store_with_a_vision_transformer_and_patch_um(tmp_path):
    """`tabst embed --encoder timm:... --weights FILE --patch-um 16`: 16 µm at the store's
    0.5 µm/px = 32 px, resized to the encoder's 224 px; the attrs record the encoder, pooling,
    kwargs, the batch chosen for the CPU, and the embedding equals the encoder run by hand."""
    import h5py
    from conftest import write_tiny_store

    from tabst.embed import embed_store
    from tabst.images import open_sample_image
    from tabst.patches import crop_patch, resize_patch

    p = write_tiny_store(tmp_path / "s.h5", n_samples=1, cells_per_sample=6,
                         with_embedding=False, with_features=False)
    with h5py.File(p, "r+") as f:
        f["images/S0"].attrs["pixel_size_um"] = 0.5
    torch.save(_tiny_timm().state_dict(), tmp_path / "tiny.pth")
    name = embed_store(p, encoder="timm:vit_tiny_patch16_224", weights=str(tmp_path / "tiny.pth"),
                       patch_size="16um", features=False, show_progress=False)
    assert name.startswith("vit_tiny_patch16_224_p16umr224_file-")
    with h5py.File(p) as f:
        ds = f[f"embeddings/{name}"]
        a = dict(ds.attrs)
        emb = ds[()]
        x, y = f["cells/x"][()], f["cells/y"][()]
        from tabst.images import sample_attrs

        img_attrs = sample_attrs(f, "S0")
    assert emb.shape == (6, 192) and np.isfinite(emb).all()
    assert a["family"] == "timm" and a["arch"] == "vit_tiny_patch16_224"
    assert a["pooling"] == "timm's own head (num_classes=0)" and int(a["resize"]) == 224
    assert json.loads(a["patch_size_px"]) == {"S0": 32} and int(a["batch_size"]) == 16
    assert a["patch_size"] == "16um" and not bool(a["random_weights"])
    m, _ = build_encoder("timm:vit_tiny_patch16_224", weights=str(tmp_path / "tiny.pth"))
    r = open_sample_image(p, img_attrs, "S0")
    batch = np.stack([resize_patch(crop_patch(r, x[i], y[i], 32)[0], 224) for i in range(6)])
    with torch.inference_mode():
        ref = m(torch.from_numpy(batch)).numpy()
    assert np.allclose(emb, ref, atol=1e-5)


def test_patch_um_needs_a_pixel_size():
    from tabst.patches import sample_patch_sizes

    assert sample_patch_sizes("112um", {"a": {"pixel_size_um": 0.5}}) == {"a": 224}
    with pytest.raises(TabstError, match="no pixel size"):
        sample_patch_sizes("112um", {"a": {"pixel_size_um": float("nan")}})
    with pytest.raises(TabstError, match="positive number"):
        sample_patch_sizes("-3um", {"a": {"pixel_size_um": 0.5}})


def test_transformers_single_file(tmp_path):
    """A lone weights file of a transformers model (no config.json beside it) loads through
    the registered config."""
    import shutil

    a, _ = build_encoder("phikon", weights="random", _overrides={"num_hidden_layers": 1})
    a.net.save_pretrained(tmp_path / "hf")
    shutil.copy(tmp_path / "hf" / "model.safetensors", tmp_path / "phikon.safetensors")
    b, info = build_encoder("phikon", weights=str(tmp_path / "phikon.safetensors"),
                            _overrides={"num_hidden_layers": 1})
    x = patches(2)
    with torch.inference_mode():
        assert torch.equal(a(x), b(x))
    assert info.weights_id == "file"
