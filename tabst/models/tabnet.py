"""TabNet (pytorch-tabnet 4.1.0): optional unsupervised pretraining, then supervised training."""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np

from ..errors import TabstError
from .base import TabstModel, inner_split, resolve_device
from .params import DEVICE_RULE, ParamError


class TabNetModel(TabstModel):
    """TabNet regressor on the codes (default: 32 target PCs), sparsemax attention masks.

    Parameters (``DEFAULTS``)
    -------------------------
    n_d : 16.  n_a : 16.  n_steps : 3.  gamma : 1.3.  n_independent : 2.  n_shared : 2.
    lambda_sparse : 1e-3.  mask_type : "sparsemax".  learning_rate : 0.02 (Adam).
    max_epochs : 50.  patience : 10 (early stopping on the inner validation MSE; the best
    epoch's weights are kept).  batch_size : "auto" (see ``_clamp``) or an integer.
    virtual_batch_size : 128.
    pretrain : True (``TabNetPretrainer`` masked-feature reconstruction first, its encoder then
    initialises the regressor via ``from_unsupervised``).  pretraining_ratio : 0.5.
    pretrain_epochs : 20.  pretrain_patience : 5.
    grouped_features : None or a list of feature-group names (e.g. ``["embedding"]``): all
    features of each named group form one TabNet attention group (they share one mask entry).
    val_fraction : 0.2 (fraction of training samples held out for early stopping).
    device : "auto" ("cuda" when available).  num_workers : 0.
    explain_steps : 32 (integration steps of the attributions, see below).
    codec : "pca" (default) | "identity";  codec_k : 32;  seed : 0.

    Batch sizes are clamped to the data: pytorch-tabnet 4.1.0 uses ``drop_last=True`` for the
    training loader *and* the pretrainer's validation loader, so ``batch_size`` is cut to the
    inner training rows (and, for pretraining, to the validation rows), rounded down to a
    multiple of ``virtual_batch_size`` (a ghost batch of one row breaks BatchNorm). The codes are
    centred and divided by one common scale (the RMS of their training std) for training and
    mapped back, so the loss is proportional to the MSE over genes.

    NaN features are imputed with training medians (base class).

    Attributes
    ----------
    net_ : ``TabNetRegressor``.  inner_split_ : str.  batch_size_, virtual_batch_size_ : used.
    history_ : validation MSE per epoch; pretrain_history_ : pretraining loss per epoch.
    background_ : [F] training mean of X (the attribution baseline).  ig_max_residual_ : float.

    ``explain``: integrated gradients from the baseline ``background_`` to each row
    (midpoint rule, ``explain_steps`` steps, one backward pass per code), then a completeness
    correction that makes the attributions additive by construction: the residual
    ``f(x) − f(baseline) − Σ_f IG_f`` of each row and code is spread over the features in
    proportion to ``|IG_f|``. The base value is ``f(baseline)``. The largest residual relative
    to ``|f(x) − f(baseline)|`` before correction is stored in ``ig_max_residual_``, and
    ``ig_total_residual_`` = Σ|residual| / Σ|f(x) − f(baseline)| over rows and codes (small
    values mean the correction is cosmetic; explain's charts use the total). ``masks(X)``
    returns TabNet's own attention masks: (aggregate [n, F], per-step list of [n, F]) — shared
    by all outputs, one mask per row.
    """

    name = "tabnet"
    DEFAULTS = {"n_d": 16, "n_a": 16, "n_steps": 3, "gamma": 1.3, "n_independent": 2,
                "n_shared": 2, "lambda_sparse": 1e-3, "mask_type": "sparsemax",
                "learning_rate": 0.02, "max_epochs": 50, "patience": 10, "batch_size": "auto",
                "virtual_batch_size": 128, "pretrain": True, "pretraining_ratio": 0.5,
                "pretrain_epochs": 20, "pretrain_patience": 5, "grouped_features": None,
                "val_fraction": 0.2, "device": "auto", "num_workers": 0, "explain_steps": 32,
                "codec": "pca"}
    _COUNT = {"kind": "int", "low": 1}
    _FRACTION = {"kind": "float", "low": 0, "low_open": True, "high": 1, "high_open": True}
    RULES = {"n_d": _COUNT, "n_a": _COUNT, "n_steps": _COUNT,
             "gamma": {"kind": "float", "low": 1},
             "n_independent": {"kind": "int", "low": 0}, "n_shared": {"kind": "int", "low": 0},
             "lambda_sparse": {"kind": "float", "low": 0},
             "mask_type": {"kind": "word", "choices": ("sparsemax", "entmax")},
             "learning_rate": {"kind": "float", "low": 0, "low_open": True},
             "max_epochs": _COUNT, "patience": {"kind": "int", "low": 0},
             "batch_size": {"kind": "int", "low": 1, "choices": ("auto",)},
             "virtual_batch_size": _COUNT, "pretrain": {"kind": "bool"},
             "pretraining_ratio": _FRACTION, "pretrain_epochs": _COUNT,
             "pretrain_patience": {"kind": "int", "low": 0},
             "grouped_features": {"kind": "words", "none_ok": True},
             "val_fraction": _FRACTION, "device": DEVICE_RULE,
             "num_workers": {"kind": "int", "low": 0}, "explain_steps": _COUNT}

    # --- helpers -------------------------------------------------------------------------------
    def _arch(self) -> dict:
        p = self.params
        return dict(n_d=p["n_d"], n_a=p["n_a"], n_steps=p["n_steps"], gamma=p["gamma"],
                    n_independent=p["n_independent"], n_shared=p["n_shared"],
                    mask_type=p["mask_type"], seed=p["seed"], verbose=0,
                    optimizer_params={"lr": p["learning_rate"]}, device_name=self.device_,
                    grouped_features=self._groups_to_indices())

    def _groups_to_indices(self):
        names = self.params["grouped_features"]
        if not names:
            return []
        if isinstance(names, str):
            names = [names]
        out = []
        for g in names:
            idx = [i for i, fg in enumerate(self.feature_groups_) if fg == g]
            if not idx:
                raise TabstError(f"tabnet: grouped_features names group {g!r}, but no feature has "
                                 f"it (groups: {', '.join(sorted(set(self.feature_groups_)))}).")
            out.append(idx)
        return out

    def _check_params(self):
        super()._check_params()
        p = self.params
        if p["n_independent"] + p["n_shared"] < 1:  # pytorch-tabnet: "can't be both zero"
            raise ParamError("tabnet", "n_shared", p["n_shared"],
                             "an integer >= 1 when n_independent is 0 (TabNet needs at least "
                             "one feature-transformer layer)")

    @staticmethod
    def _clamp(bs, vbs: int, n: int, cap: int | None = None):
        """Batch and ghost-batch sizes for ``n`` training rows (at most ``cap`` rows per batch).

        ``"auto"``: the largest power of two ≤ n/16 within [128, 1024], i.e. at least ~16
        optimiser steps per epoch (a fixed 1024 gave 6 steps per epoch on a 6,000-row fold and
        left TabNet undertrained: demo gene-wise Pearson 0.097 vs 0.160 at 256)."""
        if bs == "auto":
            bs = int(np.clip(2 ** np.floor(np.log2(max(n / 16.0, 1.0))), 128, 1024))
        bs = int(min(bs, n, cap if cap is not None else n))
        vbs = int(min(vbs, bs))
        bs = max(vbs, (bs // vbs) * vbs)
        return bs, vbs

    # --- fit -----------------------------------------------------------------------------------
    def cost_units(self, n_rows, n_features, n_genes) -> float:
        """rows x (epochs + pretraining epochs): an epoch's cost is dominated by the network,
        whose width (n_d, n_steps) is fixed; early stopping can only make it shorter."""
        p = self.params
        epochs = int(p["max_epochs"]) + (int(p["pretrain_epochs"]) if p["pretrain"] else 0)
        return float(n_rows) * epochs * max(1, n_features) ** 0.5

    def _full_batch(self, n_rows: int) -> int:
        """The batch size a fit on ``n_rows`` rows uses (after its inner validation split)."""
        n_train = max(2, int(n_rows * (1 - float(self.params["val_fraction"]))))
        return self._clamp(self.params["batch_size"], int(self.params["virtual_batch_size"]),
                           n_train)[0]

    def calibration_params(self, n_rows=None) -> dict:
        """Two epochs and one pretraining epoch, at the batch size of the real fit (the time
        per row falls 3-4x from batch 128 to 1024, so small slices at their own auto batch
        overestimated a 30k-row fit 3x)."""
        out = {"max_epochs": 2, "pretrain_epochs": 1, "patience": 0, "pretrain_patience": 0}
        if n_rows:
            out["batch_size"] = self._full_batch(int(n_rows))
        return out

    def calibration_rows(self, n_rows: int) -> int:
        """Enough rows that the real fit's batch size is not clamped by the slice."""
        return int(min(n_rows, 20 * self._full_batch(int(n_rows))))

    def _fit(self, X, Z, groups):
        import torch
        from pytorch_tabnet.callbacks import Callback
        from pytorch_tabnet.pretraining import TabNetPretrainer
        from pytorch_tabnet.tab_model import TabNetRegressor

        from ..util import progress

        p = self.params
        self.device_ = resolve_device(p["device"])
        torch.manual_seed(p["seed"])
        np.random.seed(p["seed"])
        tr, va, self.inner_split_ = inner_split(X.shape[0], groups, seed=p["seed"],
                                                frac_groups=p["val_fraction"])
        if len(tr) < 2 or len(va) < 1:
            raise TabstError(f"tabnet: too few rows to train ({X.shape[0]}).")
        self.z_mean_ = Z[tr].astype(np.float64).mean(axis=0)
        sd = Z[tr].astype(np.float64).std(axis=0)
        # one common scale for all codes (their RMS std): the loss and early stopping then track
        # the MSE in gene space (orthonormal PCA loadings); per-code standardisation weighs the
        # low-variance codes like the main ones (demo: gene-wise Pearson 0.160 vs 0.184 here)
        rms = float(np.sqrt(np.mean(sd ** 2))) if sd.size else 0.0
        self.z_scale_ = np.full_like(sd, rms if rms > 1e-12 else 1.0)
        Zs = ((Z - self.z_mean_) / self.z_scale_).astype(np.float32)
        self.background_ = X[tr].astype(np.float64).mean(axis=0).astype(np.float32)
        self.batch_size_, self.virtual_batch_size_ = self._clamp(
            p["batch_size"], p["virtual_batch_size"], len(tr))

        hook = self.round_callback

        class _Bar(Callback):
            def __init__(self, bar, task, supervised=False):
                super().__init__()
                self.bar, self.task, self.supervised = bar, task, supervised

            def on_epoch_end(self, epoch, logs=None):
                self.bar.advance(self.task)
                if hook is not None and self.supervised and logs and "val_mse" in logs:
                    hook(epoch, float(logs["val_mse"]))

        pretrainer = None
        self.pretrain_history_ = []
        # pytorch-tabnet prints to stdout (epoch summaries); keep stdout clean for --json output
        with warnings.catch_warnings(), progress(transient=True, unit="epochs") as bar, \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if p["pretrain"]:
                pbs, pvbs = self._clamp(p["batch_size"], p["virtual_batch_size"], len(tr),
                                        cap=len(va))
                pretrainer = TabNetPretrainer(**self._arch())
                task = bar.add_task("tabnet pretraining", total=int(p["pretrain_epochs"]))
                pretrainer.fit(X[tr], eval_set=[X[va]], pretraining_ratio=p["pretraining_ratio"],
                               max_epochs=int(p["pretrain_epochs"]),
                               patience=int(p["pretrain_patience"]), batch_size=pbs,
                               virtual_batch_size=pvbs, num_workers=p["num_workers"],
                               drop_last=True, callbacks=[_Bar(bar, task)])
                hist = pretrainer.history.history
                self.pretrain_history_ = [float(v) for v in hist.get("val_0_unsup_loss_numpy", [])]
            self.net_ = TabNetRegressor(lambda_sparse=p["lambda_sparse"], **self._arch())
            task = bar.add_task(f"tabnet ({Z.shape[1]} outputs)", total=int(p["max_epochs"]))
            self.net_.fit(X[tr], Zs[tr], eval_set=[(X[va], Zs[va])], eval_name=["val"],
                          eval_metric=["mse"], max_epochs=int(p["max_epochs"]),
                          patience=int(p["patience"]), batch_size=self.batch_size_,
                          virtual_batch_size=self.virtual_batch_size_,
                          num_workers=p["num_workers"], drop_last=True,
                          from_unsupervised=pretrainer, compute_importance=False,
                          callbacks=[_Bar(bar, task, supervised=True)])
        self.history_ = [float(v) for v in self.net_.history.history.get("val_mse", [])]
        self.net_._callback_container = None  # holds the progress bar: a fitted model pickles
        self.ig_max_residual_ = self.ig_total_residual_ = float("nan")
        if self.device_ == "cuda":
            self.peak_gpu_mem_mb_ = torch.cuda.max_memory_allocated() / 2 ** 20

    # --- predict / explain ----------------------------------------------------------------------
    def _forward(self, X):
        import torch

        net = self.net_.network
        net.eval()
        out = []
        with torch.no_grad():
            for s in range(0, X.shape[0], 4096):
                xb = torch.as_tensor(X[s:s + 4096], dtype=torch.float32, device=self.net_.device)
                out.append(net(xb)[0].double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.z_mean_)))

    def _predict(self, X):
        return self.z_mean_ + self._forward(X) * self.z_scale_

    def _explain(self, X):
        from .ig import complete, integrated_gradients

        net = self.net_.network
        net.eval()
        dev = self.net_.device
        steps = max(1, int(self.params["explain_steps"]))

        f_base = self._forward(self.background_[None, :])[0]          # [k] scaled codes
        f_x = self._forward(X)                                          # [n, k]
        ig = integrated_gradients(lambda z: net(z)[0], X, self.background_, steps, dev)
        ig, self.ig_max_residual_, self.ig_total_residual_ = complete(ig, f_x - f_base[None, :])
        values = ig * self.z_scale_[None, None, :]
        base = self.z_mean_ + f_base * self.z_scale_
        return values, base, (f"integrated gradients ({steps} steps, baseline = training mean) "
                              "+ completeness correction")

    def masks(self, X):
        """TabNet attention masks: (aggregate importance [n, F], [mask of step i, [n, F]])."""
        X = self._prepare(X)
        agg, per_step = self.net_.explain(X)
        return np.asarray(agg), [np.asarray(per_step[i]) for i in sorted(per_step)]

    # --- persistence ---------------------------------------------------------------------------
    def _state(self):
        return {"z_mean": self.z_mean_, "z_scale": self.z_scale_, "background": self.background_}

    def _meta(self):
        return {"inner_split": self.inner_split_, "batch_size": self.batch_size_,
                "virtual_batch_size": self.virtual_batch_size_, "history": self.history_,
                "pretrain_history": self.pretrain_history_}

    def _set_state(self, arrays, meta):
        self.z_mean_, self.z_scale_ = arrays["z_mean"], arrays["z_scale"]
        self.background_ = arrays["background"]
        self.inner_split_ = meta["inner_split"]
        self.batch_size_ = meta["batch_size"]
        self.virtual_batch_size_ = meta["virtual_batch_size"]
        self.history_ = meta["history"]
        self.pretrain_history_ = meta["pretrain_history"]
        self.ig_max_residual_ = self.ig_total_residual_ = float("nan")
        self.device_ = resolve_device(self.params["device"])

    def _save_files(self, path: Path):
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            self.net_.save_model(str(path / "tabnet"))

    def _load_files(self, path: Path):
        """pytorch-tabnet's ``load_model``, but the state dict is read with
        ``torch.load(weights_only=True)`` whatever torch's default: no code runs on load."""
        from pytorch_tabnet.tab_model import TabNetRegressor

        params, blob = _read_tabnet_zip(path / "tabnet.zip")
        params["init_params"]["device_name"] = self.device_
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = TabNetRegressor(**params["init_params"])
            state = _torch_state(blob, net.device, path / "tabnet.zip")
            net._set_network()
            net.network.load_state_dict(state)
            net.network.eval()
            net.load_class_attrs(params["class_attrs"])
        self.net_ = net


def _read_tabnet_zip(zf: Path):
    """(model_params.json as a dict, network.pt bytes) of a pytorch-tabnet model zip."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(zf) as z:
            return json.loads(z.read("model_params.json")), z.read("network.pt")
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise TabstError(f"{zf}: not a readable TabNet model ({type(e).__name__}: {e}). "
                         "Re-run `tabst compare`.") from None


def _torch_state(blob: bytes, device, zf: Path) -> dict:
    """A torch state dict from bytes, tensors only (``weights_only=True``)."""
    import pickle

    import torch

    from ..safeio import refuse

    try:
        return torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise refuse(f"{zf}:network.pt", "a torch file holding Python objects") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise TabstError(f"{zf}:network.pt: not a readable torch state dict ({e}). Re-run "
                         "`tabst compare`.") from None
