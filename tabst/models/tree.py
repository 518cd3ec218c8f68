"""A single multi-output decision tree: readable rules with feature names."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..errors import TabstError
from .base import TabstModel


class TreeModel(TabstModel):
    """sklearn ``DecisionTreeRegressor`` (multi-output, squared error) on the codes.

    Parameters (``DEFAULTS``)
    -------------------------
    max_depth : int, 6.   min_samples_leaf : int, 20.   max_features : None (all).
    ccp_alpha : float, 0.0 (cost-complexity pruning).
    codec : "pca" (default) | "identity";  codec_k : 32;  seed : 0 (``random_state``).

    NaN features are imputed with training medians (base class) so that SHAP's TreeExplainer
    sees complete rows.

    Attributes
    ----------
    tree_model_ : the fitted ``DecisionTreeRegressor`` (outputs = codes).

    ``explain``: ``shap.TreeExplainer`` (path-dependent, exact for trees, additivity checked by
    shap) on the codes, decoded linearly to genes. ``rules_text(output)``: the tree as text rules
    (``sklearn.tree.export_text``) with feature names and the leaf values of one gene (decoded
    through the codec) or, with ``component=True``, of one code.
    """

    name = "tree"
    DEFAULTS = {"max_depth": 6, "min_samples_leaf": 20, "max_features": None, "ccp_alpha": 0.0,
                "codec": "pca"}

    def _fit(self, X, Z, groups):
        from sklearn.tree import DecisionTreeRegressor

        p = self.params
        self.tree_model_ = DecisionTreeRegressor(
            max_depth=p["max_depth"], min_samples_leaf=p["min_samples_leaf"],
            max_features=p["max_features"], ccp_alpha=p["ccp_alpha"],
            random_state=p["seed"]).fit(X, Z)

    def _predict(self, X):
        return self._reshape(self.tree_model_.predict(X))

    @staticmethod
    def _reshape(z):
        z = np.asarray(z, dtype=np.float64)
        return z[:, None] if z.ndim == 1 else z

    def _explain(self, X):
        import shap

        expl = shap.TreeExplainer(self.tree_model_)
        sv = expl.shap_values(X, check_additivity=True)
        if isinstance(sv, list):  # older shap: one [n, F] array per output
            sv = np.stack(sv, axis=-1)
        sv = np.asarray(sv)
        if sv.ndim == 2:
            sv = sv[:, :, None]
        base = np.atleast_1d(np.asarray(expl.expected_value, dtype=np.float64))
        return sv, base, "shap.TreeExplainer (tree path-dependent)"

    # --- rules ---------------------------------------------------------------------------------
    def single_output_tree(self, output, component: bool = False):
        """A one-output copy of the tree whose node values are those of one gene (decoded
        through the codec: ``mean_g + Σ_k value_k · loading_kg``) or of one code."""
        from sklearn.base import clone
        from sklearn.tree._tree import Tree

        self._check_fitted()
        est = self.tree_model_
        st = est.tree_.__getstate__()
        vals = np.asarray(st["values"])[:, :, 0].astype(np.float64)  # [nodes, k]
        if component:
            k = int(output)
            if not 0 <= k < vals.shape[1]:
                raise TabstError(f"component {output} out of range 0..{vals.shape[1] - 1}.")
            v = vals[:, k]
        else:
            j = self._output_index(output)
            v = self.codec_.decode(vals)[:, j].astype(np.float64)
        st = dict(st)
        st["values"] = np.ascontiguousarray(v.reshape(-1, 1, 1))
        t = Tree(est.n_features_in_, np.array([1], dtype=np.intp), 1)
        t.__setstate__(st)
        one = clone(est)
        one.tree_ = t
        one.n_outputs_ = 1
        one.n_features_in_ = est.n_features_in_
        one.max_features_ = est.max_features_
        return one

    def rules_text(self, output=0, *, component: bool = False, max_depth: int = 10,
                   decimals: int = 3) -> str:
        """The tree's rules as text with feature names, leaves showing one gene's value.

        ``output``: gene index or name (``component=False``) or code index (``component=True``).
        """
        from sklearn.tree import export_text

        one = self.single_output_tree(output, component=component)
        label = (f"component {int(output)}" if component
                 else f"gene {self.target_names_[self._output_index(output)]}")
        names = [str(n) for n in self.feature_names_]
        body = export_text(one, feature_names=names, max_depth=max_depth, decimals=decimals)
        return f"# decision tree ({self.display_name}); leaf value = predicted {label}\n" + body

    # --- persistence -------------------------------------------------------------------------
    def _save_files(self, path: Path):
        with open(path / "tree.pkl", "wb") as f:
            pickle.dump(self.tree_model_, f, protocol=pickle.HIGHEST_PROTOCOL)

    def _load_files(self, path: Path):
        with open(path / "tree.pkl", "rb") as f:
            self.tree_model_ = pickle.load(f)
