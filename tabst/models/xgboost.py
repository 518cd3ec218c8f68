"""Gradient-boosted trees (XGBoost), one tree per output per round, with early stopping."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import TabstModel, inner_split, resolve_device
from .params import DEVICE_RULE


class XGBoostModel(TabstModel):
    """XGBoost regressor on the codes (default: 32 target PCs).

    Parameters (``DEFAULTS``)
    -------------------------
    n_estimators : 400 (boosting rounds, upper bound; early stopping picks the number).
    learning_rate : 0.05.  max_depth : 6.  min_child_weight : 1.0.  subsample : 0.8.
    colsample_bytree : 0.8.  reg_lambda : 1.0.  reg_alpha : 0.0.  max_bin : 256.
    early_stopping_rounds : 30 (0/None disables early stopping and the inner split).
    val_fraction : 0.2 (fraction of the training *samples* held out for early stopping).
    n_jobs : 0 (all cores; -1 too).  device : "auto" ("cuda" when torch sees a GPU, else "cpu").
    codec : "pca" (default) | "identity";  codec_k : 32;  seed : 0.

    Always ``tree_method="hist"`` and ``multi_strategy="one_output_per_tree"`` (shap and
    ``pred_contribs`` cannot read vector-leaf trees). NaN features are kept: XGBoost learns a
    default direction for them.

    Early stopping: an inner validation set of whole samples from ``groups`` (``val_fraction`` of
    them, at least one, never all); with no or one group, a random 10 % of rows (cell-level, so
    optimistic) — ``inner_split_`` says which. The final model is the one trained on the inner
    training part, truncated at ``best_iteration_`` (no refit).

    Attributes
    ----------
    booster_ : ``xgboost.Booster``.  best_iteration_ : int.  inner_split_ : str.
    device_ : str used.  evals_result_ : dict of validation RMSE per round.

    ``explain``: XGBoost's own exact TreeSHAP, ``Booster.predict(pred_contribs=True)``
    [n, k, F+1] → values [n, F, k] + bias (the last column, constant over rows) as base, decoded
    to genes through the codec.
    """

    name = "xgboost"
    handles_nan = True
    DEFAULTS = {"n_estimators": 400, "learning_rate": 0.05, "max_depth": 6,
                "min_child_weight": 1.0, "subsample": 0.8, "colsample_bytree": 0.8,
                "reg_lambda": 1.0, "reg_alpha": 0.0, "max_bin": 256,
                "early_stopping_rounds": 30, "val_fraction": 0.2, "n_jobs": 0,
                "device": "auto", "codec": "pca"}
    _UNIT = {"kind": "float", "low": 0, "low_open": True, "high": 1}   # (0, 1]
    RULES = {"n_estimators": {"kind": "int", "low": 1},
             "learning_rate": _UNIT,
             "max_depth": {"kind": "int", "low": 1},
             "min_child_weight": {"kind": "float", "low": 0},
             "subsample": _UNIT, "colsample_bytree": _UNIT,
             "reg_lambda": {"kind": "float", "low": 0}, "reg_alpha": {"kind": "float", "low": 0},
             "max_bin": {"kind": "int", "low": 2},
             "early_stopping_rounds": {"kind": "int", "low": 0, "none_ok": True},
             "val_fraction": {"kind": "float", "low": 0, "low_open": True, "high": 1,
                              "high_open": True},
             "n_jobs": {"kind": "int", "low": -1},
             "device": DEVICE_RULE}

    def cost_units(self, n_rows, n_features, n_genes) -> float:
        """rows x features x outputs x rounds (hist: each round builds one tree per output)."""
        return super().cost_units(n_rows, n_features, n_genes) * int(self.params["n_estimators"])

    def calibration_params(self, n_rows=None) -> dict:
        return {"n_estimators": min(20, int(self.params["n_estimators"])),
                "early_stopping_rounds": None}

    def stops_early(self) -> bool:
        return bool(self.params["early_stopping_rounds"])

    def probed_params(self, probe) -> dict:
        """After a fit with the real settings on a calibration slice (:func:`tabst.cost.probe`):
        the rounds early stopping let it run, for the estimate's units."""
        return {"n_estimators": int(probe.booster_.num_boosted_rounds())}

    def _booster_params(self, n_outputs: int) -> dict:
        p = self.params
        return {"objective": "reg:squarederror", "tree_method": "hist",
                "multi_strategy": "one_output_per_tree", "device": self.device_,
                "eta": p["learning_rate"], "max_depth": p["max_depth"],
                "min_child_weight": p["min_child_weight"], "subsample": p["subsample"],
                "colsample_bytree": p["colsample_bytree"], "lambda": p["reg_lambda"],
                "alpha": p["reg_alpha"], "max_bin": p["max_bin"], "nthread": p["n_jobs"],
                "seed": p["seed"], "eval_metric": "rmse", "verbosity": 1}

    def _fit(self, X, Z, groups):
        import xgboost as xgb

        from ..util import progress

        p = self.params
        self.device_ = resolve_device(p["device"])
        es = p["early_stopping_rounds"]
        rounds = int(p["n_estimators"])  # >= 1 (RULES)
        if es:
            tr, va, self.inner_split_ = inner_split(X.shape[0], groups, seed=p["seed"],
                                                    frac_groups=p["val_fraction"])
        else:
            tr, va, self.inner_split_ = np.arange(X.shape[0]), None, "none (no early stopping)"
        dtrain = xgb.QuantileDMatrix(X[tr], Z[tr], max_bin=p["max_bin"])
        evals = []
        if va is not None:
            evals = [(xgb.QuantileDMatrix(X[va], Z[va], ref=dtrain, max_bin=p["max_bin"]), "val")]
        self.evals_result_ = {}

        hook = self.round_callback

        class _Bar(xgb.callback.TrainingCallback):
            def __init__(self, bar, task):
                self.bar, self.task = bar, task

            def after_iteration(self, model, epoch, evals_log):
                self.bar.advance(self.task)
                if hook is not None and evals_log.get("val"):
                    hook(epoch, float(evals_log["val"]["rmse"][-1]))
                return False

        with progress(transient=True, unit="rounds") as bar:
            task = bar.add_task(f"xgboost ({Z.shape[1]} outputs)", total=rounds)
            self.booster_ = xgb.train(
                self._booster_params(Z.shape[1]), dtrain, num_boost_round=rounds, evals=evals,
                early_stopping_rounds=int(es) if (es and evals) else None,
                evals_result=self.evals_result_, verbose_eval=False,
                callbacks=[_Bar(bar, task)])
        self.best_iteration_ = int(getattr(self.booster_, "best_iteration", rounds - 1)
                                   if evals else rounds - 1)
        self.n_outputs_ = int(Z.shape[1])

    def _dmatrix(self, X):
        import xgboost as xgb

        return xgb.DMatrix(X)

    def _predict(self, X):
        import xgboost as xgb

        with xgb.config_context(verbosity=0):
            z = self.booster_.predict(self._dmatrix(X),
                                      iteration_range=(0, self.best_iteration_ + 1))
        z = np.asarray(z, dtype=np.float64)
        return z.reshape(X.shape[0], self.n_outputs_)

    def _explain(self, X):
        import xgboost as xgb

        with xgb.config_context(verbosity=0):
            c = self.booster_.predict(self._dmatrix(X), pred_contribs=True,
                                      iteration_range=(0, self.best_iteration_ + 1))
        c = np.asarray(c, dtype=np.float64)
        if c.ndim == 2:  # single output: [n, F+1]
            c = c[:, None, :]
        values = np.transpose(c[:, :, :-1], (0, 2, 1))  # [n, F, k]
        bias = c[:, :, -1]  # [n, k], constant over rows
        base = bias[0] if len(bias) else np.zeros(self.n_outputs_)
        return values, base, "xgboost pred_contribs (exact TreeSHAP)"

    # --- persistence -------------------------------------------------------------------------
    def _meta(self):
        return {"best_iteration": self.best_iteration_, "inner_split": self.inner_split_,
                "device": self.device_, "n_outputs": self.n_outputs_}

    def _set_state(self, arrays, meta):
        self.best_iteration_ = int(meta["best_iteration"])
        self.inner_split_ = meta["inner_split"]
        self.device_ = resolve_device(self.params["device"])
        self.n_outputs_ = int(meta["n_outputs"])
        self.evals_result_ = {}

    def _save_files(self, path: Path):
        self.booster_.save_model(str(path / "booster.json"))

    def _load_files(self, path: Path):
        import xgboost as xgb

        self.booster_ = xgb.Booster()
        self.booster_.load_model(str(path / "booster.json"))
        self.booster_.set_param({"device": self.device_})
