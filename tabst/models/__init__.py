"""tabst model zoo: one registry, one contract (DESIGN.md).

API summary (for compare / explain / predict)
=============================================

Registry
--------
``REGISTRY: dict[str, type]`` = ``{"mean": MeanModel, "ridge": RidgeModel, "ridge-hest":
RidgeHestModel, "tree": TreeModel, "xgboost": XGBoostModel, "tabnet": TabNetModel}``.
``make_model(name, params=None)`` → ``REGISTRY[name](**params)``; ``model_defaults(name)`` → every
parameter with its default; ``load_model(dir)`` (= ``TabstModel.load(dir)``) loads any saved model.

Every model (``tabst.models.base.TabstModel``)
----------------------------------------------
- ``Model(**params)`` stores params only (unknown names → ``TabstError`` listing valid ones)
  and checks every value against its rule (``Model.RULES`` + ``params.COMMON_RULES``, applied
  by :func:`tabst.models.params.check_param`): a bad one → ``ParamError`` (a ``TabstError``)
  naming ``model.param``, the value and what is allowed.
  Common params (``COMMON_DEFAULTS``): ``codec`` ("identity" | "pca"), ``codec_k`` (32),
  ``seed`` (0). Per-model params and defaults: ``Model.DEFAULTS`` (see each class docstring).
  Default codec: "pca" for xgboost, tabnet, tree; "identity" for ridge, ridge-hest, mean.
- ``display_name``: e.g. ``"xgboost+pca32"``, ``"ridge"`` (codec shown unless identity).
- ``fit(X, Y, groups=None, *, feature_names=None, feature_groups=None, target_names=None)``
  → self. X float [n, F] (NaN allowed), Y [n, G] (finite), groups [n] sample ids (used for
  ridge's grouped CV and xgboost/tabnet's by-sample early-stopping split).
- ``predict(X)`` → float32 [n, G].
- ``explain(X)`` → ``Explanation(values float32 [n, F, G], base float64 [G], feature_names,
  feature_groups, output_names, method)``; ``base + values.sum(1) == predict(X)`` (float tol.).
  ``Explanation.prediction`` [n, G]; ``Explanation.by_group()`` → (group names, [n, n_groups, G]).
  Methods: mean → zeros; ridge, ridge-hest → exact linear SHAP; tree → shap.TreeExplainer;
  xgboost → ``pred_contribs`` (TreeSHAP); tabnet → integrated gradients + completeness correction.
  Attributions on PCA codes are mapped to genes linearly (``codec.decode_attributions``).
- ``save(dir)`` (atomic: temp folder + rename) / ``Model.load(dir)`` / ``TabstModel.load(dir)``.
- Learned attributes end in ``_``; after fit always: ``fit_seconds_``, ``peak_mem_mb_`` (peak RSS
  increase during fit, sampled every 20 ms), ``codec_``, ``impute_values_`` (training medians,
  or None for xgboost), ``feature_names_``, ``feature_groups_``, ``target_names_``,
  ``n_features_in_``.
- Imputation of NaN features (ridge, tree, tabnet, mean): in-fold training medians, inside the
  model (saved with it). XGBoost keeps NaN.

Model-specific extras
---------------------
- ``RidgeModel``: params ``alphas`` (None → 13 × logspace(-1, 7)), ``cv`` (8), ``batch_rows``
  (8192), ``precision`` ("auto": float32 unless the data are too ill-conditioned for it, then
  float64 | "float32": big products summed in float32 on shifted data, like sklearn on float32
  input | "float64": exact). Attrs ``alpha_`` [k], ``precision_used_``, ``alphas_``,
  ``cv_mse_`` [n_alphas, k], ``cv_fold_mse_``
  [n_folds, n_alphas, k], ``cv_fold_groups_``, ``cv_kind_`` ("grouped" | "rows"), ``coef_``,
  ``mean_x_``, ``scale_x_``, ``mean_y_``. ``fit_batches(iterable of (X, Y, groups), *,
  feature_names=None, feature_groups=None, target_names=None)`` fits out-of-core.
- ``RidgeHestModel`` (``ridge-hest``): HEST-Benchmark's probe, ``sklearn`` Ridge with one
  α = 100 / (d · n_genes) (``alpha`` None; or a number), lsqr (``max_iter`` 1000, ``tol`` 1e-4),
  no intercept. Attrs ``alpha_``, ``coef_`` [F, k], ``mean_x_``, ``n_iter_``.
- ``TreeModel``: params ``max_depth`` (6), ``min_samples_leaf`` (20), ``max_features`` (None),
  ``ccp_alpha`` (0.0). ``rules_text(output=0, *, component=False, max_depth=10, decimals=3)``
  (output = gene index or name; component=True → code index), ``single_output_tree(output,
  component=False)`` → a one-output sklearn tree; attr ``tree_model_``.
- ``XGBoostModel``: params ``n_estimators`` (400), ``learning_rate`` (0.05), ``max_depth`` (6),
  ``min_child_weight`` (1.0), ``subsample`` (0.8), ``colsample_bytree`` (0.8), ``reg_lambda``
  (1.0), ``reg_alpha`` (0.0), ``max_bin`` (256), ``early_stopping_rounds`` (30),
  ``val_fraction`` (0.2), ``n_jobs`` (0 = all), ``device`` ("auto"). Attrs ``booster_``,
  ``best_iteration_``, ``inner_split_`` (text), ``device_``, ``evals_result_``.
- ``TabNetModel``: params ``n_d`` (16), ``n_a`` (16), ``n_steps`` (3), ``gamma`` (1.3),
  ``n_independent`` (2), ``n_shared`` (2), ``lambda_sparse`` (1e-3), ``mask_type``
  ("sparsemax"), ``learning_rate`` (0.02), ``max_epochs`` (50), ``patience`` (10),
  ``batch_size`` (1024), ``virtual_batch_size`` (128), ``pretrain`` (True),
  ``pretraining_ratio`` (0.5), ``pretrain_epochs`` (20), ``pretrain_patience`` (5),
  ``grouped_features`` (None or list of feature-group names, e.g. ["embedding"]),
  ``val_fraction`` (0.2), ``device`` ("auto"), ``num_workers`` (0), ``explain_steps`` (32).
  ``masks(X)`` → (aggregate [n, F], [per-step [n, F]]) (TabNet's own, shared by all outputs).
  Attrs ``net_``, ``history_``, ``pretrain_history_``, ``batch_size_``,
  ``virtual_batch_size_``, ``inner_split_``, ``background_``, ``ig_max_residual_``.

Related: ``tabst.codec`` (``IdentityCodec``, ``PCACodec(k)``, ``make_codec(kind, k)``:
``fit(Y)``, ``encode``, ``decode``, ``decode_attributions`` [n,F,k]→[n,F,G], ``decode_base``) and
``tabst.dataset`` (``FeatureBuilder(spec).fit(store, rows)``, ``.transform(store, rows)``,
``feature_names_``, ``feature_groups_``, ``save(dir)``/``load(dir)``; ``load_targets(store,
rows)`` → (Y, genes); ``rows_with_expression(store)``; ``validate_spec(spec)``).
"""
from __future__ import annotations

from .base import COMMON_DEFAULTS, Explanation, TabstModel, inner_split, resolve_device
from .context import ContextK0Model, ContextModel
from .mean import MeanModel
from .ridge import RidgeModel
from .ridge_hest import RidgeHestModel
from .tabnet import TabNetModel
from .tree import TreeModel
from .xgboost import XGBoostModel

REGISTRY: dict[str, type] = {
    "mean": MeanModel,
    "ridge": RidgeModel,
    "ridge-hest": RidgeHestModel,
    "tree": TreeModel,
    "xgboost": XGBoostModel,
    "tabnet": TabNetModel,
    "context": ContextModel,
    "context-k0": ContextK0Model,
}


def make_model(name: str, params: dict | None = None) -> TabstModel:
    """``REGISTRY[name](**params)`` with a clear error for an unknown name."""
    from ..errors import TabstError

    if name not in REGISTRY:
        raise TabstError(f"unknown model {name!r}; choose from: {', '.join(REGISTRY)}.")
    return REGISTRY[name](**(params or {}))


def model_defaults(name: str) -> dict:
    """All parameters of a model with their defaults (common ones included)."""
    return {**COMMON_DEFAULTS, **REGISTRY[name].DEFAULTS}


def load_model(path) -> TabstModel:
    """Load any saved model directory (dispatches on its registry key)."""
    return TabstModel.load(path)


__all__ = ["REGISTRY", "Explanation", "TabstModel", "MeanModel", "RidgeModel", "RidgeHestModel",
           "TreeModel",
           "XGBoostModel", "TabNetModel", "make_model", "model_defaults", "load_model",
           "inner_split", "resolve_device"]
