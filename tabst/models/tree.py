"""A single multi-output decision tree: readable rules with feature names."""
from __future__ import annotations

import numpy as np

from ..errors import TabstError
from .base import TabstModel
from .params import ParamError


class TreeModel(TabstModel):
    """sklearn ``DecisionTreeRegressor`` (multi-output, squared error) on the codes.

    Parameters (``DEFAULTS``)
    -------------------------
    max_depth : int >= 1 or None (unlimited), 6.   min_samples_leaf : int >= 1, 20.
    max_features : None (all), "sqrt", "log2", an int >= 1 (features per split) or a float in
    (0, 1] (fraction of them).
    ccp_alpha : float, 0.0 (cost-complexity pruning).
    codec : "pca" (default) | "identity";  codec_k : 32;  seed : 0 (``random_state``).

    NaN features are imputed with training medians (base class) so that SHAP's TreeExplainer
    sees complete rows.

    Attributes
    ----------
    tree_model_ : the fitted ``DecisionTreeRegressor`` (outputs = codes).

    Saved without pickle: the ``tree_`` node arrays (one per field of sklearn's node record:
    children, feature, threshold, impurity, sample counts, ``missing_go_to_left``) and the node
    values go into ``state.npz``, sizes into ``model.json``; :meth:`load` rebuilds an identical
    ``DecisionTreeRegressor`` (bit-identical predictions) after checking the node links.

    ``explain``: ``shap.TreeExplainer`` (path-dependent, exact for trees, additivity checked by
    shap) on the codes, decoded linearly to genes. ``rules_text(output)``: the tree as text rules
    (``sklearn.tree.export_text``) with feature names and the leaf values of one gene (decoded
    through the codec) or, with ``component=True``, of one code.
    """

    name = "tree"
    DEFAULTS = {"max_depth": 6, "min_samples_leaf": 20, "max_features": None, "ccp_alpha": 0.0,
                "codec": "pca"}
    RULES = {"max_depth": {"kind": "int", "low": 1, "none_ok": True},
             "min_samples_leaf": {"kind": "int", "low": 1},
             # an integer: how many features per split; a float: which fraction of them
             "max_features": {"kind": "float", "low": 0, "low_open": True,
                              "choices": ("sqrt", "log2"), "none_ok": True},
             "ccp_alpha": {"kind": "float", "low": 0}}

    def _check_params(self):
        super()._check_params()
        mf = self.params["max_features"]
        if isinstance(mf, (float, np.floating)) and mf > 1:  # a fraction above 1
            raise ParamError("tree", "max_features", mf, "null, 'sqrt', 'log2', an integer >= 1 "
                             "(features per split) or a number > 0 and <= 1 (a fraction of them)")

    def _estimator(self):
        """An unfitted ``DecisionTreeRegressor`` with this model's parameters."""
        from sklearn.tree import DecisionTreeRegressor

        p = self.params
        return DecisionTreeRegressor(
            max_depth=p["max_depth"], min_samples_leaf=p["min_samples_leaf"],
            max_features=p["max_features"], ccp_alpha=p["ccp_alpha"], random_state=p["seed"])

    def cost_units(self, n_rows, n_features, n_genes) -> float:
        """CART: rows log rows x features x outputs (sorting at each level)."""
        import math

        return super().cost_units(n_rows, n_features, n_genes) * math.log2(max(2, n_rows))

    def _fit(self, X, Z, groups):
        self.tree_model_ = self._estimator().fit(X, Z)

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

    # --- persistence (no pickle: node arrays in state.npz, sizes in model.json) ------------
    def _state(self) -> dict:
        st = self.tree_model_.tree_.__getstate__()
        nodes = st["nodes"]
        arrays = {f"tree_{name}": np.ascontiguousarray(nodes[name]) for name in nodes.dtype.names}
        arrays["tree_values"] = np.asarray(st["values"])
        return arrays

    def _meta(self) -> dict:
        est = self.tree_model_
        return {"sklearn_tree": {"n_features": int(est.n_features_in_),
                                 "n_outputs": int(est.n_outputs_),
                                 "max_features_": int(est.max_features_),
                                 "max_depth": int(est.tree_.max_depth),
                                 "node_count": int(est.tree_.node_count)}}

    def _set_state(self, arrays: dict, meta: dict) -> None:
        info = meta.get("sklearn_tree")
        if info is None or "tree_values" not in arrays:
            raise TabstError("saved tree model without its node arrays (an older tabst "
                             "version?). Re-run `tabst compare`.")
        est = self._estimator()
        est.tree_ = _rebuild_tree(arrays, info)
        est.n_outputs_ = int(info["n_outputs"])
        est.n_features_in_ = int(info["n_features"])
        est.max_features_ = int(info["max_features_"])
        self.tree_model_ = est


def _node_record(arrays: dict, n: int):
    """sklearn's node structured array (installed version's dtype) from saved field arrays."""
    from sklearn.tree._tree import NODE_DTYPE

    nodes = np.zeros(n, dtype=NODE_DTYPE)
    for name in NODE_DTYPE.names:
        a = arrays.get(f"tree_{name}")
        if a is None:
            if name == "missing_go_to_left":  # saved by an sklearn without missing-value support
                continue
            raise TabstError(f"saved tree model lacks node field '{name}'. Re-run `tabst compare`.")
        if a.shape != (n,):
            raise TabstError(f"saved tree model: node field '{name}' has shape {a.shape}, "
                             f"expected ({n},). Re-run `tabst compare`.")
        nodes[name] = a
    return nodes


def _check_links(nodes, n_features: int) -> None:
    """Children come after their parent (as sklearn builds them) and split features exist, so
    prediction never reads outside the arrays."""
    idx = np.arange(len(nodes))
    left, right, feat = nodes["left_child"], nodes["right_child"], nodes["feature"]
    leaf = left == -1
    inner_ok = ((left > idx) & (right > idx) & (left < len(nodes)) & (right < len(nodes))
                & (feat >= 0) & (feat < n_features))
    if not np.all(np.where(leaf, right == -1, inner_ok)):
        raise TabstError("saved tree model has inconsistent node links (corrupt file). "
                         "Re-run `tabst compare`.")


def _rebuild_tree(arrays: dict, info: dict):
    """A ``sklearn.tree._tree.Tree`` equal to the saved one."""
    from sklearn.tree._tree import Tree

    n, k, nf = int(info["node_count"]), int(info["n_outputs"]), int(info["n_features"])
    nodes = _node_record(arrays, n)
    _check_links(nodes, nf)
    values = np.ascontiguousarray(arrays["tree_values"], dtype=np.float64)
    if n < 1 or values.shape != (n, k, 1):
        raise TabstError(f"saved tree model: values of shape {values.shape}, expected "
                         f"({n}, {k}, 1). Re-run `tabst compare`.")
    tree = Tree(nf, np.ones(k, dtype=np.intp), k)
    tree.__setstate__({"max_depth": int(info["max_depth"]), "node_count": n, "nodes": nodes,
                       "values": values})
    return tree
