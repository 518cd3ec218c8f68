"""Encoders, weights handling, `tabst embed` store output, resume after interruption, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import write_tiny_store

from tabst.embed import SimulatedInterruption, default_name, embed_store
from tabst.encoders import ENCODERS, build_encoder, encoder_dim
from tabst.errors import InputError, TabstError
from tabst.util import sha256_file

torch.set_num_threads(1)


def small_store(tmp_path, name="s.h5", **kw):
    kw.setdefault("cells_per_sample", 20)
    return write_tiny_store(tmp_path / name, with_embedding=False, with_features=False, **kw)


def patches(n=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("layer,dim", [("layer3", 256), ("layer4", 512)])
def test_resnet18_output_shape(layer, dim):
    m, info = build_encoder("resnet18", layer, "random")
    with torch.inference_mode():
        out = m(patches())
    assert out.shape == (3, dim) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert info.dim == dim == encoder_dim("resnet18", layer)


def test_resnet50_layer3_is_1024():
    m, info = build_encoder("resnet50", "layer3", "random")
    with torch.inference_mode():
        assert m(patches(2)).shape == (2, 1024)
    assert info.weights_id == "random(seed=0)" and info.weights_sha256 == ""


def test_normalisation_and_cut_match_torchvision():
    import torchvision

    m, _ = build_encoder("resnet18", "layer3", "random")
    torch.manual_seed(0)
    full = torchvision.models.resnet18(weights=None).eval()  # same seed -> same weights
    x = patches(2)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    z = (x.permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.inference_mode():
        z = full.maxpool(full.relu(full.bn1(full.conv1(z))))
        ref = full.layer3(full.layer2(full.layer1(z))).mean(dim=(2, 3))
        assert torch.allclose(m(x), ref, atol=1e-4, rtol=1e-4)


def test_random_weights_are_reproducible():
    a, _ = build_encoder("resnet18", "layer3", "random")
    b, _ = build_encoder("resnet18", "layer3", "random")
    with torch.inference_mode():
        assert torch.equal(a(patches()), b(patches()))


def test_local_weights_file(tmp_path):
    import torchvision

    torch.manual_seed(123)
    net = torchvision.models.resnet18(weights=None)
    p = tmp_path / "w.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, p)
    m, info = build_encoder("resnet18", "layer4", str(p))
    assert info.weights_sha256 == sha256_file(p) and info.weights == str(p)
    rnd, _ = build_encoder("resnet18", "layer4", "random")
    with torch.inference_mode():
        assert not torch.equal(m(patches()), rnd(patches()))
    build_encoder("resnet18", "layer4", str(p), expected_sha256=sha256_file(p).upper())
    with pytest.raises(InputError, match="sha256 mismatch"):
        build_encoder("resnet18", "layer4", str(p), expected_sha256="0" * 64)
    with pytest.raises(InputError, match="do not fit resnet50"):
        build_encoder("resnet50", "layer3", str(p))
    # layer3 needs no layer4 / fc weights
    part = tmp_path / "part.pt"
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith(("layer4", "fc"))},
               part)
    build_encoder("resnet18", "layer3", str(part))
    with pytest.raises(InputError, match="missing keys"):
        build_encoder("resnet18", "layer4", str(part))
    with pytest.raises(InputError, match="does not exist"):
        build_encoder("resnet18", "layer3", str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(InputError, match="state dict"):
        build_encoder("resnet18", "layer3", str(bad))


def test_imagenet_offline_error_names_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(TabstError) as e:
        build_encoder("resnet18", "layer3", "imagenet")
    msg = str(e.value)
    assert "--weights PATH" in msg and "--weights random" in msg and "connect" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg


def test_imagenet_from_torch_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: pytest.fail("must not download when cached"))
    ck = tmp_path / "torch" / "hub" / "checkpoints"
    ck.mkdir(parents=True)
    torch.manual_seed(5)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), ck / "resnet18-f37072fd.pth")
    _, info = build_encoder("resnet18", "layer3", "imagenet")
    assert info.weights_id == "ResNet18_Weights.IMAGENET1K_V1"
    assert info.weights_sha256 == sha256_file(ck / "resnet18-f37072fd.pth")
    with pytest.raises(TabstError, match="no 'NOPE'"):
        build_encoder("resnet18", "layer3", "imagenet:NOPE")
    # the default --weights auto is recorded as imagenet (the name and settings of older runs)
    p = small_store(tmp_path, cells_per_sample=4)
    name = embed_store(p, encoder="resnet18", batch_size=8, features=False, show_progress=False)
    assert name == "resnet18_layer3_p32_imagenet"
    with h5py.File(p) as f:
        assert json.loads(f[f"embeddings/{name}"].attrs["settings"])["weights"] == "imagenet"


def test_unknown_names():
    with pytest.raises(TabstError, match="unknown encoder"):
        build_encoder("vgg16", "layer3", "random")
    with pytest.raises(TabstError, match="unknown layer"):
        build_encoder("resnet18", "layer2", "random")
    assert set(ENCODERS) >= {"resnet18", "resnet34", "resnet50", "resnet101"}


def test_embed_store_attrs_and_values(tmp_path):
    p = small_store(tmp_path)
    name = embed_store(p, encoder="resnet18", layer="layer3", weights="random", batch_size=16,
                       workers=0, show_progress=False)
    assert name == default_name("resnet18", "layer3", 32, None, "random") \
        == "resnet18_layer3_p32_random"
    with h5py.File(p) as f:
        ds = f[f"embeddings/{name}"]
        a = dict(ds.attrs)
        E = ds[()]
        x, y = f["cells/x"][:3], f["cells/y"][:3]
        assert "features/morphology" in f and bool(f["features/morphology"].attrs["complete"])
    assert E.shape == (60, 256) and E.dtype == np.float32 and np.isfinite(E).all()
    assert bool(a["complete"]) and int(a["rows_done"]) == 60
    for k, v in dict(encoder="resnet18", layer="layer3", weights="random", resize=0,
                     patch_size=32, weights_id="random(seed=0)", device="cpu",
                     precision="float32", batch_size=16, per_cell_fit="crop").items():
        assert a[k] == v, k
    assert bool(a["random_weights"]) and "RANDOM" in a["description"]
    assert "imagenet" in a["normalisation"] and "0.485" in a["normalisation"]
    assert json.loads(a["versions"])["torch"] == torch.__version__
    assert json.loads(a["patch_size_px"]) == {"S0": 32, "S1": 32, "S2": 32}
    # the stored rows are the encoder applied to the crops (row order kept)
    from PIL import Image

    from tabst.patches import crop_patch

    img = np.asarray(Image.open(Path(p).parent / "S0.png"))

    class R:
        height, width = img.shape[:2]

        def read_region(self, y0, x0, h, w):
            out = np.zeros((h, w, 3), np.uint8)
            ya, xa = max(0, y0), max(0, x0)
            sub = img[ya:y0 + h, xa:x0 + w]
            out[ya - y0:ya - y0 + sub.shape[0], xa - x0:xa - x0 + sub.shape[1]] = sub
            return out

    crops = np.stack([crop_patch(R(), x[i], y[i], 32)[0] for i in range(3)])
    m, _ = build_encoder("resnet18", "layer3", "random")
    with torch.inference_mode():
        ref = m(torch.from_numpy(crops)).numpy()
    assert np.allclose(E[:3], ref, atol=1e-4)


def test_resize_and_workers_give_same_result(tmp_path):
    a = small_store(tmp_path, "a.h5")
    b = small_store(tmp_path, "b.h5")
    kw = dict(encoder="resnet18", layer="layer4", weights="random", batch_size=16, resize=64,
              show_progress=False, features=False)
    na = embed_store(a, workers=0, **kw)
    nb = embed_store(b, workers=1, **kw)
    assert na == nb == "resnet18_layer4_p32r64_random"
    with h5py.File(a) as fa, h5py.File(b) as fb:
        assert fa[f"embeddings/{na}"].attrs["resize"] == 64
        assert np.array_equal(fa[f"embeddings/{na}"][()], fb[f"embeddings/{nb}"][()])
        assert "features" not in fa


def test_resume_after_interruption_is_identical(tmp_path):
    a = small_store(tmp_path, "a.h5")
    b = small_store(tmp_path, "b.h5")
    kw = dict(encoder="resnet18", layer="layer3", weights="random", workers=0,
              show_progress=False)
    name = embed_store(a, batch_size=8, **kw)
    with pytest.raises(SimulatedInterruption):
        embed_store(b, batch_size=8, _stop_after_batches=3, **kw)
    with h5py.File(b) as f:
        ds = f[f"embeddings/{name}"]
        assert int(ds.attrs["rows_done"]) == 24 and not bool(ds.attrs["complete"])
        assert np.isnan(ds[24:]).all() and np.isfinite(ds[:24]).all()
    embed_store(b, batch_size=32, **kw)  # recorded batch size 8 is reused -> same boundaries
    with h5py.File(a) as fa, h5py.File(b) as fb:
        ea, eb = fa[f"embeddings/{name}"], fb[f"embeddings/{name}"]
        assert bool(eb.attrs["complete"]) and int(eb.attrs["batch_size"]) == 8
        assert np.array_equal(ea[()], eb[()])
        assert np.array_equal(fa["features/morphology"][()], fb["features/morphology"][()],
                              equal_nan=True)


def test_sigkill_then_rerun_resumes(tmp_path, capsys):
    """A real kill -9 of `tabst embed` (after a batch's rows, before its marker), then a rerun."""
    ref = small_store(tmp_path, "ref.h5")
    p = small_store(tmp_path, "k.h5")
    args = ["embed", "--encoder", "resnet18", "--weights", "random", "--batch-size", "8",
            "--workers", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TABST_EMBED_KILL_AFTER="2")
    cmd = [sys.executable, "-c", "from tabst_cli.app import main; main()"]
    r = subprocess.run(cmd + args + [str(p)], env=env, capture_output=True, timeout=300)
    assert r.returncode == -9, r.stderr.decode()[-2000:]
    name = "resnet18_layer3_p32_random"
    with h5py.File(p) as f:  # killed after writing batch 2's rows but before its marker
        ds = f[f"embeddings/{name}"]
        assert int(ds.attrs["rows_done"]) == 8 and not bool(ds.attrs["complete"])
    kw = dict(encoder="resnet18", weights="random", batch_size=8, workers=0)
    embed_store(p, **kw)  # the same settings as the killed command
    assert "resuming" in capsys.readouterr().err
    embed_store(ref, show_progress=False, **kw)
    with h5py.File(ref) as fa, h5py.File(p) as fb:
        assert bool(fb[f"embeddings/{name}"].attrs["complete"])
        assert np.array_equal(fa[f"embeddings/{name}"][()], fb[f"embeddings/{name}"][()])
        assert np.array_equal(fa["features/morphology"][()], fb["features/morphology"][()],
                              equal_nan=True)


def test_other_settings_refused_unless_force(tmp_path):
    p = small_store(tmp_path)
    kw = dict(encoder="resnet18", weights="random", batch_size=32, workers=0,
              show_progress=False, features=False)
    embed_store(p, name="emb", **kw)
    with pytest.raises(TabstError, match="other settings.*layer"):
        embed_store(p, name="emb", layer="layer4", **kw)
    embed_store(p, name="emb", layer="layer4", force=True, **kw)
    with h5py.File(p) as f:
        assert f["embeddings/emb"].shape == (60, 512)
        assert f["embeddings/emb"].attrs["layer"] == "layer4"


def test_per_cell_patches_and_spot_size(tmp_path):
    from PIL import Image

    from tabst.store import put, set_attr

    p = small_store(tmp_path, n_samples=1)
    rng = np.random.default_rng(1)
    paths = []
    (tmp_path / "cells").mkdir()
    for i in range(20):
        q = tmp_path / "cells" / f"c{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(q)
        paths.append(f"cells/{i and f'c{i}.png' or 'c0.png'}")
    with h5py.File(p, "r+") as f:
        put(f["cells"], "image", np.array(paths, dtype=object), description="patch path")
        g = f["images/S0"]
        set_attr(g, "kind", "per-cell")
        set_attr(g, "path", "")
        set_attr(g, "spot_diameter_px", 40.0)
    name = embed_store(p, encoder="resnet18", weights="random", patch_size="spot", batch_size=8,
                       workers=0, show_progress=False)
    assert name == "resnet18_layer3_pspot_random"
    with h5py.File(p) as f:
        E = f[f"embeddings/{name}"][()]
        assert f[f"embeddings/{name}"].attrs["patch_size"] == "spot"
    img = np.asarray(Image.open(tmp_path / "cells" / "c3.png"))
    m, _ = build_encoder("resnet18", "layer3", "random")
    with torch.inference_mode():
        ref = m(torch.from_numpy(img[None].copy())).numpy()
    assert np.allclose(E[3], ref[0], atol=1e-4)


def test_cli_embed(tmp_path):
    from tabst_cli.app import app
    from typer.testing import CliRunner

    p = small_store(tmp_path)
    r = CliRunner().invoke(app, ["embed", str(p), "--encoder", "resnet18", "--weights", "random",
                                 "--batch-size", "32", "--workers", "0", "--no-features",
                                 "--name", "cli"])
    assert r.exit_code == 0, r.output
    assert "RANDOM WEIGHTS" in r.output
    with h5py.File(p) as f:
        assert bool(f["embeddings/cli"].attrs["complete"]) and "features" not in f
    r = CliRunner().invoke(app, ["embed", str(p), "--encoder", "alexnet", "--weights", "random"])
    assert r.exit_code == 1 and "unknown encoder" in r.output
    r = CliRunner().invoke(app, ["embed", str(p), "--patch-size", "spot", "--weights", "random",
                                 "--encoder", "resnet18"])
    assert r.exit_code == 1 and "spot diameter" in r.output
    r = CliRunner().invoke(app, ["embed", str(tmp_path / "none.h5"), "--weights", "random"])
    assert r.exit_code == 1 and "no such store" in r.output


def test_spot_store_defaults_patch_to_the_spot_resized_to_the_median_without_density(tmp_path):
    """patch_size auto = spot on a spot store; sections whose spot sizes differ by a pixel or
    two are resized to the median; no neighbourhood density on the regular spot grid. A
    cell store keeps 32 px and the neighbourhood features."""
    import h5py
    from conftest import write_tiny_store

    from tabst.embed import embed_store

    spot = write_tiny_store(tmp_path / "spot" / "s.h5", n_samples=3, cells_per_sample=6,
                            image_size=64, with_embedding=False, with_features=False)
    with h5py.File(spot, "r+") as f:
        for s, d in zip(("S0", "S1", "S2"), (11.2, 12.0, 13.4)):
            f[f"images/{s}"].attrs["spot_diameter_px"] = d
    name = embed_store(spot, encoder="resnet18", weights="random", batch_size=8,
                       show_progress=False)
    with h5py.File(spot) as f:
        a = f[f"embeddings/{name}"].attrs
        assert str(a["patch_size"]) == "spot" and int(a["resize"]) == 12
        assert json.loads(a["patch_size_px"]) == {"S0": 11, "S1": 12, "S2": 13}
        names = [str(n) for n in f["features/morphology"].attrs["names"]]
        assert names and not any(n.startswith(("density", "knn")) for n in names)
        assert np.isfinite(f[f"embeddings/{name}"][()]).all()
    cells = write_tiny_store(tmp_path / "cell" / "c.h5", n_samples=2, cells_per_sample=6,
                             image_size=64, with_embedding=False, with_features=False)
    name = embed_store(cells, encoder="resnet18", weights="random", batch_size=8,
                       show_progress=False)
    with h5py.File(cells) as f:
        assert int(f[f"embeddings/{name}"].attrs["patch_size"]) == 32
        names = [str(n) for n in f["features/morphology"].attrs["names"]]
        assert any(n.startswith("density") for n in names)
