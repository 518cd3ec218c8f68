"""``context``: a deep-set head on the cell and its spatial neighbours (the approach that won
Crunch 1, DeepSpot): per-item MLPs φ, mean and max pooling over the neighbours, ρ -> outputs.

Its feature set is the run's plus a ``context`` block (:mod:`tabst.context_features`): for the
``k`` nearest cells of the same sample, their embedding PCs, ``/features`` columns and distance
(the model asks for it through :meth:`ContextModel.feature_spec`; compare builds it once per
fold and saves it with the model). The block's columns are found by their ``context:`` groups.

Parameters (``DEFAULTS``)
-------------------------
k : 16 neighbours (0 = the cell alone: the ablation ``context-k0``).
components : 16 embedding PCs per neighbour.  hidden : 256.  width : 128 (φ output).
shared_phi : False (True: the cell and its neighbours share φ's body; each keeps its own input
layer, as their columns differ: the cell has tissue / position, a neighbour its distance).
dropout : 0.1.  loss : ``mse`` | ``pearson`` (1 - per-cell Pearson across outputs, the Crunch
metric's smooth cousin) | ``cosine`` | ``mix`` (``mix_weight`` · mse + (1 - it) · pearson).
learning_rate : 1e-3 (AdamW).  weight_decay : 1e-4.  epochs : 40.  patience : 6 (early
stopping on an inner validation set of whole samples, ``val_fraction`` of them).
batch_size : 256.  n_models : 3 (an ensemble of seeds, averaged).  device : auto.
explain_steps : 32.  codec : identity (loss across genes).

``explain``: integrated gradients of the ensemble (baseline = training mean) with the
completeness correction, as TabNet's; the neighbours' columns carry ``context:`` groups, so
attributions split into the cell itself vs its neighbourhood. ``ig_total_residual_`` reports
the share of the change the correction supplies.
"""
from __future__ import annotations

import copy

import numpy as np

from ..errors import TabstError
from .base import TabstModel, inner_split, resolve_device
from .params import DEVICE_RULE

LOSSES = ("mse", "pearson", "cosine", "mix")


def _net(n_cell: int, w: int, k: int, out: int, hidden: int, width: int, dropout: float,
         shared: bool = False):
    import torch
    from torch import nn

    def trunk():
        return nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, width), nn.ReLU())

    body = trunk() if shared else None  # shared: one φ body, an input layer per item type

    def mlp(i):
        return nn.Sequential(nn.Linear(i, hidden), body if shared else trunk())

    class DeepSet(nn.Module):
        def __init__(self):
            super().__init__()
            self.k, self.w = k, w
            self.phi_cell = mlp(n_cell)
            self.phi_nbr = mlp(w) if k else None
            self.rho = nn.Sequential(nn.Linear(width * (3 if k else 1), hidden), nn.ReLU(),
                                     nn.Dropout(dropout), nn.Linear(hidden, out))

        def forward(self, cell, nbr):
            h = self.phi_cell(cell)
            if self.k:
                e = self.phi_nbr(nbr.reshape(-1, self.w)).reshape(nbr.shape[0], self.k, -1)
                h = torch.cat([h, e.mean(dim=1), e.max(dim=1).values], dim=1)
            return self.rho(h)

    return DeepSet()


class ContextModel(TabstModel):
    __doc__ = __doc__
    name = "context"
    DEFAULTS = {"k": 16, "components": 16, "hidden": 256, "width": 128, "shared_phi": False,
                "dropout": 0.1,
                "loss": "mse", "mix_weight": 0.5, "learning_rate": 1e-3, "weight_decay": 1e-4,
                "epochs": 40, "patience": 6, "batch_size": 256, "n_models": 3,
                "val_fraction": 0.2, "device": "auto", "explain_steps": 32, "codec": "identity"}
    _POS = {"kind": "int", "low": 1}
    RULES = {"k": {"kind": "int", "low": 0}, "components": {"kind": "int", "low": 0},
             "hidden": _POS, "width": _POS, "shared_phi": {"kind": "bool"},
             "dropout": {"kind": "float", "low": 0, "high": 1, "high_open": True},
             "loss": {"kind": "word", "choices": LOSSES},
             "mix_weight": {"kind": "float", "low": 0, "high": 1},
             "learning_rate": {"kind": "float", "low": 0, "low_open": True},
             "weight_decay": {"kind": "float", "low": 0}, "epochs": _POS,
             "patience": _POS, "batch_size": _POS, "n_models": _POS,
             "val_fraction": {"kind": "float", "low": 0, "low_open": True, "high": 1,
                              "high_open": True},
             "device": DEVICE_RULE, "explain_steps": _POS}

    def feature_spec(self, spec: dict) -> dict:
        """The run's feature set plus the neighbours' block (none for ``k = 0``)."""
        if not int(self.params["k"]):
            return spec
        out = copy.deepcopy(spec)
        comps = int(self.params["components"]) if out.get("embedding") is not None else 0
        out["context"] = {"k": int(self.params["k"]), "components": comps}
        return out

    def cost_units(self, n_rows, n_features, n_genes) -> float:
        return super().cost_units(n_rows, n_features, n_genes) * int(self.params["epochs"]) \
            * int(self.params["n_models"])

    def calibration_params(self, n_rows=None) -> dict:
        return {"epochs": 2, "n_models": 1}

    # --- fit -----------------------------------------------------------------------------------
    def _columns(self):
        from ..context_features import context_columns

        cell, nbr = context_columns(self.feature_names_, self.feature_groups_)
        nbr = nbr[:int(self.params["k"])]
        return cell, nbr

    def _split(self, X):
        import torch

        Xs = (X - self.x_mean_) / self.x_scale_
        cell = torch.as_tensor(Xs[:, self.cell_idx_], dtype=torch.float32)
        if len(self.nbr_idx_):
            nbr = torch.as_tensor(Xs[:, self.nbr_idx_.reshape(-1)], dtype=torch.float32)
            nbr = nbr.reshape(len(X), *self.nbr_idx_.shape)
        else:
            nbr = torch.zeros((len(X), 0, 0))
        return cell, nbr

    def _loss(self, pred, target):
        import torch

        p = self.params
        mse = ((pred - target) ** 2).mean()
        if p["loss"] == "mse":
            return mse
        s = torch.as_tensor(self.z_scale_, dtype=torch.float32, device=pred.device)
        m = torch.as_tensor(self.z_mean_, dtype=torch.float32, device=pred.device)
        a, b = pred * s + m, target * s + m  # on the outputs' own scale, across outputs
        if p["loss"] == "cosine":
            return 1 - torch.nn.functional.cosine_similarity(a, b, dim=1).mean()
        a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
        r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)
        pear = 1 - r.mean()
        return pear if p["loss"] == "pearson" else p["mix_weight"] * mse + \
            (1 - p["mix_weight"]) * pear

    def _fit(self, X, Z, groups):
        import torch

        p = self.params
        self.device_ = resolve_device(p["device"])
        self.cell_idx_, self.nbr_idx_ = self._columns()
        if not len(self.cell_idx_):
            raise TabstError("context: the feature set has no columns of the cell itself.")
        self.x_mean_ = X.mean(axis=0)
        sd = X.std(axis=0)
        self.x_scale_ = np.where(sd > 1e-8, sd, 1.0).astype(np.float32)
        self.z_mean_ = Z.mean(axis=0).astype(np.float32)
        zs = Z.std(axis=0)
        self.z_scale_ = np.where(zs > 1e-8, zs, 1.0).astype(np.float32)
        self.background_ = self.x_mean_.astype(np.float32)
        tr, va, self.inner_split_ = inner_split(X.shape[0], groups, seed=p["seed"],
                                                frac_groups=p["val_fraction"])
        cell, nbr = self._split(X)
        Zs = torch.as_tensor((Z - self.z_mean_) / self.z_scale_, dtype=torch.float32)
        self.dims_ = dict(n_cell=len(self.cell_idx_), w=int(self.nbr_idx_.shape[1])
                          if len(self.nbr_idx_) else 0, k=int(len(self.nbr_idx_)),
                          out=int(Z.shape[1]), hidden=int(p["hidden"]), width=int(p["width"]),
                          dropout=float(p["dropout"]), shared=bool(p["shared_phi"]))
        self.nets_, self.history_ = [], []
        for i in range(int(p["n_models"])):
            net, hist = self._train_one(i, cell, nbr, Zs, tr, va)
            self.nets_.append(net)
            self.history_.append(hist)

    def _train_one(self, i, cell, nbr, Zs, tr, va):
        import torch

        from ..util import progress

        p = self.params
        torch.manual_seed(int(p["seed"]) + i)
        gen = torch.Generator().manual_seed(int(p["seed"]) + i)
        net = _net(**self.dims_).to(self.device_)
        opt = torch.optim.AdamW(net.parameters(), lr=p["learning_rate"],
                                weight_decay=p["weight_decay"])
        bs = int(min(p["batch_size"], len(tr)))
        dev = self.device_
        best, best_state, bad, hist = float("inf"), None, 0, []
        with progress(transient=True, unit="epochs") as bar:
            task = bar.add_task(f"context {i + 1}/{p['n_models']}", total=int(p["epochs"]))
            for epoch in range(int(p["epochs"])):
                net.train()
                perm = torch.as_tensor(tr)[torch.randperm(len(tr), generator=gen)]
                for s in range(0, len(perm), bs):
                    b = perm[s:s + bs]
                    if len(b) < 2:
                        continue
                    opt.zero_grad()
                    loss = self._loss(net(cell[b].to(dev), nbr[b].to(dev)), Zs[b].to(dev))
                    loss.backward()
                    opt.step()
                net.eval()
                with torch.no_grad():
                    v = float(self._loss(net(cell[va].to(dev), nbr[va].to(dev)), Zs[va].to(dev)))
                hist.append(v)
                bar.advance(task)
                if self.round_callback is not None and i == 0:
                    self.round_callback(epoch, v)
                if v < best - 1e-6:
                    best, bad = v, 0
                    best_state = {k: t.detach().clone() for k, t in net.state_dict().items()}
                else:
                    bad += 1
                    if bad >= int(p["patience"]):
                        break
        if best_state is not None:
            net.load_state_dict(best_state)
        return net.eval(), hist

    # --- predict / explain -----------------------------------------------------------------------
    def _ensemble(self, cell, nbr):
        import torch

        return torch.stack([n(cell, nbr) for n in self.nets_]).mean(dim=0)

    def _predict(self, X):
        import torch

        out = []
        with torch.no_grad():
            for s in range(0, len(X), 8192):
                cell, nbr = self._split(X[s:s + 8192])
                out.append(self._ensemble(cell.to(self.device_), nbr.to(self.device_)).cpu())
        z = torch.cat(out).numpy() if out else np.zeros((0, len(self.z_mean_)), np.float32)
        return z.astype(np.float64) * self.z_scale_ + self.z_mean_

    def _explain(self, X):
        import torch

        from .ig import complete, integrated_gradients

        steps = max(1, int(self.params["explain_steps"]))
        dev = self.device_

        xs = torch.as_tensor((X - self.x_mean_) / self.x_scale_, dtype=torch.float32, device=dev)
        b = (self.background_ - self.x_mean_) / self.x_scale_
        cidx = torch.as_tensor(self.cell_idx_, device=dev)
        nidx = torch.as_tensor(self.nbr_idx_.reshape(-1), device=dev)
        shape = self.nbr_idx_.shape

        def f(z):  # standardised inputs [m, F] -> scaled codes [m, k]
            nbr = z[:, nidx].reshape(len(z), *shape) if len(nidx) else z.new_zeros((len(z), 0, 0))
            return self._ensemble(z[:, cidx], nbr)

        with torch.no_grad():
            f_base = f(torch.as_tensor(b[None, :], dtype=torch.float32, device=dev))[0]
            f_base = f_base.cpu().numpy().astype(np.float64)
            f_x = f(xs).cpu().numpy().astype(np.float64)
        ig = integrated_gradients(f, xs, b, steps, dev)
        ig, _, self.ig_total_residual_ = complete(ig, f_x - f_base[None, :])
        return (ig * self.z_scale_[None, None, :], self.z_mean_ + f_base * self.z_scale_,
                f"integrated gradients of the {len(self.nets_)}-seed ensemble ({steps} steps, "
                "baseline = training mean) + completeness correction")

    # --- persistence ---------------------------------------------------------------------------
    def _state(self):
        out = {"x_mean": self.x_mean_, "x_scale": self.x_scale_, "z_mean": self.z_mean_,
               "z_scale": self.z_scale_, "background": self.background_,
               "cell_idx": self.cell_idx_, "nbr_idx": self.nbr_idx_}
        for i, net in enumerate(self.nets_):
            for key, v in net.state_dict().items():
                out[f"net{i}.{key}"] = v.detach().cpu().numpy()
        return out

    def _meta(self):
        return {"dims": self.dims_, "inner_split": self.inner_split_, "history": self.history_,
                "n_nets": len(self.nets_)}

    def _set_state(self, arrays, meta):
        import torch

        for a in ("x_mean", "x_scale", "z_mean", "z_scale", "background", "cell_idx",
                  "nbr_idx"):
            setattr(self, a + "_", arrays[a])
        self.dims_, self.inner_split_ = meta["dims"], meta["inner_split"]
        self.history_ = meta["history"]
        self.device_ = resolve_device(self.params["device"])
        self.nets_ = []
        for i in range(int(meta["n_nets"])):
            net = _net(**self.dims_)
            pre = f"net{i}."
            net.load_state_dict({k[len(pre):]: torch.as_tensor(v) for k, v in arrays.items()
                                 if k.startswith(pre)})
            self.nets_.append(net.to(self.device_).eval())
        self.ig_total_residual_ = float("nan")


class ContextK0Model(ContextModel):
    """``context`` with ``k = 0``: the same head on the cell alone (what the neighbours buy)."""

    name = "context-k0"
    DEFAULTS = {**ContextModel.DEFAULTS, "k": 0}
