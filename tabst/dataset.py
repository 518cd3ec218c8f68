"""Tabular dataset builder: a store + a declared feature set → X [n, F] with names and groups.

A feature set is a dict (from YAML), every key optional (defaults in :data:`DEFAULT_FEATURE_SET`)::

    embedding:     {name: auto | <name in /embeddings>, pca: 64 | null, standardize: false}
                   # or null: no embedding
    metadata:      {tissue: true, position: auto}   # position: true | false | auto
    features:      [morphology]            # datasets in /features (names/groups from their attrs)
    neighbourhood: {k: 8, components: 16} | null

Columns, in this order, with their group:

- ``emb_pc1..`` (group ``embedding``): the embedding projected on its first ``pca`` principal
  components; the PCA (mean + components) is fitted on the *training rows only*, streaming with
  :func:`tabst.store.iter_batches` and an exact float64 covariance accumulation (``dsyrk``), then
  ``eigh``. ``pca: null`` → the raw embedding columns ``emb_0..``. ``standardize: true``
  standardises each embedding column first (training mean and population sd, as sklearn's
  ``StandardScaler``; a constant column gets sd 1), so the PCA is that of the correlation
  matrix: HEST-Benchmark's ``StandardScaler → PCA(256)`` (each component's sign makes its
  largest-magnitude loading positive, as sklearn's ``svd_flip``). Components with no training
  variance (≤ :data:`PCA_NULL_TOL` × the largest: more components than the training rows or
  the embedding's non-constant columns span) are left out (``pca_null_dropped_``); their
  directions are round-off, and a model that standardises its inputs would amplify them.
- ``tissue=<t>`` (group ``tissue``): one-hot over the tissues seen in the training rows; an unseen
  tissue gives all zeros.
- ``x_norm``, ``y_norm`` (group ``position``): min–max normalised to [0, 1] within each sample,
  over all cells of that sample in the store (the position of a cell in its own section; no
  expression is used, so it does not leak). A sample whose cells all share one x (or y) gets 0.5.
  ``position: auto`` = on for cell stores, off for spot stores (:func:`is_spot_store`): on spots
  the position is a tissue-layout prior of the section, not image evidence (``position_`` and
  ``position_reason_`` record the choice).
- the columns of each ``/features/<name>`` (names and groups from the dataset's ``names`` and
  ``groups`` attrs; group defaults to ``<name>``). Missing values stay NaN.
- ``nbr_pc1..`` (group ``neighbourhood``): mean of the first ``components`` embedding PCs over the
  ``k`` nearest *other* cells of the same sample (``scipy.spatial.cKDTree`` on x, y; neighbours are
  looked up among all cells of the sample in the store, the cell itself excluded). A sample with a
  single cell gives NaN.

Constant columns: a ``tissue``, ``position`` or ``/features`` column that is constant over the
training rows (e.g. ``tissue=unknown`` for every spot) carries nothing and is dropped at fit
(``dropped_constant_`` lists each with its value; embedding columns are always kept).

NaN policy: the builder keeps NaN (XGBoost handles it). Models that cannot (ridge, tree, tabnet,
mean) impute in-fold medians themselves (:class:`tabst.models.base.TabstModel`), so a saved model
carries its own imputer.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import StoreError, TabstError
from .feature_spec import DEFAULT_FEATURE_SET, resolve_position, validate_spec
from .safeio import check_legacy_file, check_no_pickles, load_npz
from .spots import is_spot_store
from .store import get_str_list, iter_batches, opened, read_strings

#: a principal component with variance <= this x the largest is a null direction (not kept)
PCA_NULL_TOL = 1e-10

__all__ = ["DEFAULT_FEATURE_SET", "FeatureBuilder", "is_spot_store", "load_targets",
           "rows_with_expression", "validate_spec"]

def rows_with_expression(store) -> np.ndarray:
    """Row indices (sorted) of cells with measured expression (``/cells/has_expression``, or
    every row when that field is absent)."""
    with opened(store) as f:
        if "expression/X" not in f:
            raise StoreError(f"{getattr(f, 'filename', store)}: no /expression/X in the store; "
                             "ingest expression first (`tabst ingest ...`).")
        n = f["cells/cell_id"].shape[0]
        if "cells/has_expression" in f:
            return np.flatnonzero(np.asarray(f["cells/has_expression"][()], dtype=bool))
        return np.arange(n)


def load_targets(store, rows, batch_size: int = 16384, columns=None):
    """Expression of ``rows`` → (Y float32 [n, G], genes list). Raises if a row holds NaN.

    ``columns``: gene (column) indices to keep, e.g. a gene selection; only ``batch_size`` full
    rows are in memory at a time, so Y holds just [n, len(columns)]."""
    rows = np.asarray(rows, dtype=np.int64)
    with opened(store) as f:
        if "expression/X" not in f:
            raise StoreError(f"{getattr(f, 'filename', store)}: no /expression/X in the store.")
        genes = [str(g) for g in read_strings(f["expression/genes"])]
        if columns is not None:
            columns = np.asarray(columns, dtype=np.int64)
            genes = [genes[j] for j in columns]
        Y = np.empty((len(rows), len(genes)), dtype=np.float32)
        pos = 0
        for b in iter_batches(f, ["expression/X"], batch_size, rows=rows):
            y = b["expression/X"]
            if columns is not None:
                y = y[:, columns]
            Y[pos:pos + len(y)] = y
            pos += len(y)
        bad = ~np.isfinite(Y).all(axis=1)
        if bad.any():
            i = int(rows[np.flatnonzero(bad)[0]])
            cid = read_strings(f["cells/cell_id"])[i] if "cells/cell_id" in f else i
            raise StoreError(f"{getattr(f, 'filename', store)}: /expression/X row {i + 1} (cell "
                             f"{cid}) holds NaN: {int(bad.sum())} requested rows have no "
                             "expression. "
                             "Select rows with tabst.dataset.rows_with_expression(store).")
    return Y, genes


class FeatureBuilder:
    """Build X [n, F] from a store according to a feature-set spec (see module docstring).

    Parameters
    ----------
    spec : dict or None (None → :data:`DEFAULT_FEATURE_SET`); validated at construction.
    batch_size : rows per streamed read.

    Attributes (after :meth:`fit`)
    ------------------------------
    feature_names_, feature_groups_ : list[str], one per column of X.
    embedding_name_ : str or None.  pca_mean_ [D], pca_scale_ [D] (1 unless ``standardize``),
    pca_components_ [p, D], pca_explained_variance_ratio_ [p].  tissues_ : list[str].
    n_train_rows_ : int.  position_ : bool (``position`` resolved), position_reason_ : str.
    dropped_constant_ : list of ``{"name", "group", "value"}``, columns constant on the
    training rows, left out of X.  pca_null_dropped_ : int, null components left out.
    """

    def __init__(self, spec: dict | None = None, batch_size: int = 16384):
        self.spec = validate_spec(spec)
        self.batch_size = int(batch_size)

    # --- fit -------------------------------------------------------------------------------------
    def fit(self, store, rows) -> "FeatureBuilder":
        """Fit everything learned (embedding PCA, tissue categories) on the training ``rows``."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        if len(rows) < 2:
            raise TabstError(f"feature builder: need at least 2 training rows, got {len(rows)}.")
        sp = self.spec
        with opened(store) as f:
            fname = getattr(f, "filename", str(store))
            self.embedding_name_ = self._pick_embedding(f) if sp["embedding"] else None
            self.n_train_rows_ = int(len(rows))
            n_pc = 0
            if self.embedding_name_:
                D = int(f[f"embeddings/{self.embedding_name_}"].shape[1])
                self.embedding_dim_ = D
                n_pc = max(sp["embedding"]["pca"] or 0,
                           sp["neighbourhood"]["components"] if sp["neighbourhood"] else 0,
                           sp["context"]["components"] if sp["context"] else 0)
                if n_pc or sp["embedding"]["standardize"]:
                    self._fit_pca(f, rows, min(n_pc, D, len(rows)))
            self.position_, self.position_reason_ = resolve_position(
                f, sp["metadata"]["position"])
            self.tissues_ = []
            if sp["metadata"]["tissue"]:
                t = read_strings(f["cells/tissue"])[rows] if "cells/tissue" in f else []
                self.tissues_ = sorted({str(v) for v in t})
            self.extra_features_ = []
            for name in sp["features"]:
                key = f"features/{name}"
                if key not in f:
                    have = sorted(f["features"].keys()) if "features" in f else []
                    raise StoreError(
                        f"{fname}: the feature set asks for /features/{name}, which the store "
                        f"lacks (it has: {', '.join(have) or 'none'}). Run `tabst embed` to add "
                        f"morphology features, or remove '{name}' from the feature set's features.")
                ds = f[key]
                K = int(ds.shape[1]) if ds.ndim == 2 else 1
                names = get_str_list(ds, "names") if "names" in ds.attrs else \
                    [f"{name}_{i}" for i in range(K)]
                groups = get_str_list(ds, "groups") if "groups" in ds.attrs else [name] * K
                if len(names) != K or len(groups) != K:
                    raise StoreError(f"{fname}: /features/{name} has {K} columns but its names/"
                                     f"groups attrs have {len(names)}/{len(groups)} entries.")
                self.extra_features_.append({"name": name, "names": names, "groups": groups})
            self.dropped_constant_ = self._constant_columns(f, rows)
        self._build_names()
        return self

    def _constant_columns(self, f, rows) -> list:
        """The tissue / position / ``/features`` columns constant over the training ``rows``
        (every value equal, or every value NaN), as ``{"name", "group", "value"}``."""
        out = []
        if len(self.tissues_) == 1:  # one tissue in training: its one-hot column is all 1
            out.append({"name": f"tissue={self.tissues_[0]}", "group": "tissue", "value": 1.0})
        blocks = []
        if self.position_:
            xy = np.column_stack([f["cells/x"][()], f["cells/y"][()]]).astype(np.float64)
            blocks.append((["x_norm", "y_norm"], ["position"] * 2,
                           _minmax_within(read_strings(f["cells/sample"]), xy, rows)))
        for ef in self.extra_features_:
            key = f"features/{ef['name']}"
            parts = [np.asarray(b[key], dtype=np.float64).reshape(len(b["rows"]), -1)
                     for b in iter_batches(f, [key], self.batch_size, rows=rows)]
            blocks.append((ef["names"], ef["groups"], np.concatenate(parts)))
        for names, groups, V in blocks:
            nan = np.isnan(V)
            with np.errstate(invalid="ignore"):
                lo = np.where(nan, np.inf, V).min(axis=0)
                hi = np.where(nan, -np.inf, V).max(axis=0)
            for j in np.flatnonzero((nan.all(axis=0)) | ((lo == hi) & ~nan.any(axis=0))):
                out.append({"name": str(names[j]), "group": str(groups[j]),
                            "value": None if nan[:, j].all() else float(lo[j])})
        return out

    def _pick_embedding(self, f) -> str:
        name = self.spec["embedding"]["name"]
        fname = getattr(f, "filename", "store")
        have = sorted(f["embeddings"].keys()) if "embeddings" in f else []
        if name not in (None, "auto"):
            if name not in have:
                raise StoreError(f"{fname}: no embedding '{name}' "
                                 f"(have: {', '.join(have) or 'none'}). "
                                 "Run `tabst embed` or set embedding.name to one of them.")
            return str(name)
        complete = [h for h in have if bool(f[f"embeddings/{h}"].attrs.get("complete", True))]
        if not complete:
            raise StoreError(f"{fname}: no complete embedding in /embeddings "
                             f"({'none at all' if not have else 'incomplete: ' + ', '.join(have)})"
                             ". "
                             "Run `tabst embed` (a rerun resumes), or set 'embedding: null'.")
        if len(complete) > 1:
            raise TabstError(f"{fname}: several embeddings ({', '.join(complete)}); name one in "
                             "the feature set (embedding.name) instead of 'auto'.")
        return complete[0]

    def _fit_pca(self, f, rows, n_pc: int):
        from scipy.linalg.blas import dsyrk

        key = f"embeddings/{self.embedding_name_}"
        D = self.embedding_dim_
        s = np.zeros(D)
        xx = np.zeros((D, D), order="F")
        n = 0
        for b in iter_batches(f, [key], self.batch_size, rows=rows):
            E = np.ascontiguousarray(b[key], dtype=np.float64)
            if not np.isfinite(E).all():
                i = int(b["rows"][np.flatnonzero(~np.isfinite(E).all(axis=1))[0]])
                raise StoreError(f"{getattr(f, 'filename', 'store')}: /{key} row {i + 1} holds "
                                 "NaN; "
                                 "re-run `tabst embed` to complete the embedding.")
            n += E.shape[0]
            s += E.sum(axis=0)
            xx = dsyrk(1.0, E.T, beta=1.0, c=xx, trans=0, lower=0, overwrite_c=1)
        U = np.triu(xx)
        xx = U + np.triu(U, 1).T
        mean = s / n
        cov = (xx - n * np.outer(mean, mean)) / max(n - 1, 1)
        self.pca_mean_ = mean
        self.pca_scale_ = np.ones(D)
        if self.spec["embedding"]["standardize"]:  # StandardScaler: population sd, constant → 1
            var = np.clip(np.diag(cov) * (max(n - 1, 1) / n), 0.0, None)
            const = var <= 1e-12 * np.maximum(np.diag(xx) / n, 1e-300)
            self.pca_scale_ = np.where(const, 1.0, np.sqrt(var))
            cov = cov / np.outer(self.pca_scale_, self.pca_scale_)
            cov[const, :] = 0.0
            cov[:, const] = 0.0
        if n_pc == 0:  # standardize only, no PCA
            return
        evals, evecs = np.linalg.eigh(cov)
        order = np.argsort(evals)[::-1][:n_pc]
        # null directions (no training variance, e.g. an embedding column constant in training,
        # or more components than the training rows span) are an arbitrary round-off basis: a
        # model that rescales its inputs (ridge) blows their test values up; they are left out
        null = evals[order] <= PCA_NULL_TOL * max(float(evals.max()), 1e-300)
        self.pca_null_dropped_ = int(null.sum())
        order = order[~null] if (~null).any() else order[:1]
        comps = evecs[:, order].T
        sign = np.sign(comps[np.arange(len(order)), np.abs(comps).argmax(axis=1)])
        sign[sign == 0] = 1
        self.pca_components_ = comps * sign[:, None]
        tot = max(float(np.trace(cov)), 1e-300)
        self.pca_explained_variance_ratio_ = np.clip(evals[order], 0, None) / tot

    def _build_names(self):
        sp = self.spec
        names, groups = [], []
        if self.embedding_name_:
            p = sp["embedding"]["pca"]
            if p:
                p = min(int(p), self.pca_components_.shape[0])
                names += [f"emb_pc{i + 1}" for i in range(p)]
            else:
                names += [f"emb_{i}" for i in range(self.embedding_dim_)]
            groups += ["embedding"] * (len(names) - len(groups))
        for t in self.tissues_:
            names.append(f"tissue={t}")
            groups.append("tissue")
        if self.position_:
            names += ["x_norm", "y_norm"]
            groups += ["position", "position"]
        for ef in self.extra_features_:
            names += list(ef["names"])
            groups += list(ef["groups"])
        if sp["neighbourhood"]:
            c = min(sp["neighbourhood"]["components"], self.pca_components_.shape[0])
            names += [f"nbr_pc{i + 1}" for i in range(c)]
            groups += ["neighbourhood"] * c
        if sp["context"]:
            from .context_features import context_layout

            cn, cg = context_layout(sp["context"]["k"], self._context_pcs(), self.extra_features_)
            names += cn
            groups += cg
        # columns before the dropped ones are never dropped (embedding), so position = index
        drop = {(d["group"], d["name"]) for d in self.dropped_constant_}
        self._keep = np.asarray([(g, nm) not in drop for nm, g in zip(names, groups)], dtype=bool)
        self._out_col = np.cumsum(self._keep) - 1  # full column -> column of X (if kept)
        self.feature_names_ = [nm for nm, k in zip(names, self._keep) if k]
        self.feature_groups_ = [g for g, k in zip(groups, self._keep) if k]

    # --- transform -------------------------------------------------------------------------------
    def transform(self, store, rows) -> np.ndarray:
        """X float32 [len(rows), F] for ``rows`` (in the given order)."""
        self._check_fitted()
        rows = np.asarray(rows, dtype=np.int64)
        sp = self.spec
        F = len(self.feature_names_)
        X = np.empty((len(rows), F), dtype=np.float32)

        def put(col, V, at=slice(None)):  # full columns col.. of V → their kept columns of X
            keep = self._keep[col:col + V.shape[1]]
            X[at, self._out_col[col:col + V.shape[1]][keep]] = V[:, keep]
            return col + V.shape[1]

        with opened(store) as f:
            col = 0
            if self.embedding_name_:  # first, never dropped: written in place
                key = f"embeddings/{self.embedding_name_}"
                p = sp["embedding"]["pca"]
                width = min(int(p), self.pca_components_.shape[0]) if p else self.embedding_dim_
                pos = 0
                for b in iter_batches(f, [key], self.batch_size, rows=rows):
                    E = b[key]
                    m = len(E)
                    X[pos:pos + m, col:col + width] = (
                        self._project(E, width) if p else self._standardise(E))
                    pos += m
                col += width
            if self.tissues_:
                t = read_strings(f["cells/tissue"])[rows]
                col = put(col, np.column_stack([t == name for name in self.tissues_]))
            samples = None
            if self.position_ or sp["neighbourhood"] or sp["context"]:
                samples = read_strings(f["cells/sample"])
                xs, ys = f["cells/x"][()].astype(np.float64), f["cells/y"][()].astype(np.float64)
            if self.position_:
                col = put(col, _minmax_within(samples, np.column_stack([xs, ys]), rows))
            for ef in self.extra_features_:
                key = f"features/{ef['name']}"
                K = len(ef["names"])
                pos = 0
                for b in iter_batches(f, [key], self.batch_size, rows=rows):
                    v = np.asarray(b[key], dtype=np.float32).reshape(len(b["rows"]), K)
                    put(col, v, slice(pos, pos + len(v)))
                    pos += len(v)
                col += K
            if sp["neighbourhood"]:
                c = min(sp["neighbourhood"]["components"], self.pca_components_.shape[0])
                col = put(col, self._neighbourhood(f, rows, samples, xs, ys, c))
            if sp["context"]:
                from .context_features import context_block

                col = put(col, context_block(self, f, rows, samples, xs, ys,
                                             sp["context"]["k"], self._context_pcs(),
                                             self.batch_size))
        assert col == len(self._keep)
        return X

    def fit_transform(self, store, rows) -> np.ndarray:
        return self.fit(store, rows).transform(store, rows)

    def _standardise(self, E):
        """The raw embedding, standardised when the spec says so (else as stored)."""
        if not self.spec["embedding"]["standardize"]:
            return E
        return ((np.asarray(E, dtype=np.float64) - self.pca_mean_) / self.pca_scale_).astype(
            np.float32)

    def _project(self, E, width):
        return (((np.asarray(E, dtype=np.float64) - self.pca_mean_) / self.pca_scale_)
                @ self.pca_components_[:width].T).astype(np.float32)

    def _context_pcs(self) -> int:
        c = self.spec["context"]["components"] if self.spec["context"] else 0
        return min(c, self.pca_components_.shape[0]) if c and self.embedding_name_ else 0

    def _neighbourhood(self, f, rows, samples, xs, ys, c):
        """Mean of the first ``c`` PCs over each row's k nearest other cells of its sample."""
        from .context_features import knn_rows, store_key

        nbr, _ = knn_rows(samples, xs, ys, rows, self.spec["neighbourhood"]["k"],
                          cache_key=store_key(f))
        key = f"embeddings/{self.embedding_name_}"
        out = np.full((len(rows), c), np.nan, dtype=np.float32)
        uniq = np.unique(nbr[nbr >= 0])
        if not len(uniq):
            return out
        pcs = np.concatenate([self._project(b[key], c)
                              for b in iter_batches(f, [key], self.batch_size, rows=uniq)])
        count = (nbr >= 0).sum(axis=1)  # k, or fewer in a small sample
        for n_ok in np.unique(count[count > 0]):
            sel = count == n_ok
            out[sel] = pcs[np.searchsorted(uniq, nbr[sel, :n_ok])].mean(axis=1)
        return out

    def summary(self, previous: dict | None = None, fold=None) -> dict:
        """What the fitted builder feeds the models (``run.json`` ``features``): ``n_features``
        and ``groups`` {group: columns} (of this builder), ``used_groups`` (in column order),
        ``position`` {setting, used, reason}, ``dropped_constant`` (constant columns left
        out) and ``pca_null_dropped`` (null components left out). With ``previous`` (the
        summary of the folds before) and ``fold``: ``used_groups`` is the union over the folds,
        ``dropped_constant`` and ``pca_null_dropped`` are {fold: value}."""
        self._check_fitted()
        g = list(self.feature_groups_)
        out = {"n_features": len(g), "groups": {k: g.count(k) for k in dict.fromkeys(g)},
               "used_groups": list(dict.fromkeys(g)),
               "position": {"setting": self.spec["metadata"]["position"],
                            "used": bool(self.position_), "reason": self.position_reason_},
               "dropped_constant": list(self.dropped_constant_),
               "pca_null_dropped": int(getattr(self, "pca_null_dropped_", 0))}
        if fold is not None:
            prev = previous or {}
            out["used_groups"] = list(dict.fromkeys(prev.get("used_groups", []) + g))
            for key in ("dropped_constant", "pca_null_dropped"):  # {fold: ...}
                out[key] = {**prev.get(key, {}), str(fold): out[key]}
        return out

    def _check_fitted(self):
        if not hasattr(self, "feature_names_"):
            raise TabstError("feature builder is not fitted: call fit(store, train_rows) first.")

    # --- persistence -------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write ``features.json`` + ``features.npz`` into directory ``path``."""
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"spec": self.spec, "batch_size": self.batch_size,
                "embedding_name": self.embedding_name_,
                "embedding_dim": getattr(self, "embedding_dim_", None),
                "tissues": self.tissues_, "extra_features": self.extra_features_,
                "n_train_rows": self.n_train_rows_, "position": self.position_,
                "position_reason": self.position_reason_,
                "dropped_constant": self.dropped_constant_,
                "pca_null_dropped": getattr(self, "pca_null_dropped_", 0),
                "feature_names": self.feature_names_, "feature_groups": self.feature_groups_}
        arrays = {}
        if hasattr(self, "pca_mean_"):
            arrays = {"pca_mean": self.pca_mean_, "pca_scale": self.pca_scale_}
        if hasattr(self, "pca_components_"):
            arrays.update(pca_components=self.pca_components_,
                          pca_evr=self.pca_explained_variance_ratio_)
        np.savez(path / "features.npz", **arrays)
        (path / "features.json").write_text(json.dumps(meta, indent=1))
        return path

    @classmethod
    def load(cls, path) -> "FeatureBuilder":
        """Load a builder saved with :meth:`save`. A pickled one (``<path>.joblib`` of older run
        folders, or a pickle in ``path``) is refused (:class:`tabst.safeio.UnsafeFileError`)."""
        path = Path(path)
        check_legacy_file(path)
        check_no_pickles(path)
        if not (path / "features.json").exists():
            raise TabstError(f"{path}: no features.json (not a saved feature builder).")
        meta = json.loads((path / "features.json").read_text())
        fb = cls(meta["spec"], batch_size=meta["batch_size"])
        fb.embedding_name_ = meta["embedding_name"]
        if meta["embedding_dim"] is not None:
            fb.embedding_dim_ = int(meta["embedding_dim"])
        fb.tissues_ = meta["tissues"]
        fb.extra_features_ = meta["extra_features"]
        fb.n_train_rows_ = meta["n_train_rows"]
        # builders saved before position: auto / constant dropping: position as the spec said
        fb.position_ = bool(meta.get("position", fb.spec["metadata"]["position"]))
        fb.position_reason_ = meta.get("position_reason", "as configured")
        fb.dropped_constant_ = list(meta.get("dropped_constant", []))
        fb.pca_null_dropped_ = int(meta.get("pca_null_dropped", 0))
        z = load_npz(path / "features.npz")
        if "pca_mean" in z:
            fb.pca_mean_ = z["pca_mean"]
            fb.pca_scale_ = z.get("pca_scale", np.ones_like(fb.pca_mean_))
        if "pca_components" in z:
            fb.pca_components_ = z["pca_components"]
            fb.pca_explained_variance_ratio_ = z["pca_evr"]
        fb._build_names()
        if fb.feature_names_ != meta["feature_names"]:
            raise TabstError(f"{path}: features.json lists other feature names than its spec "
                             "builds; the folder is damaged or from another tabst version.")
        fb.feature_groups_ = meta["feature_groups"]
        return fb


def _minmax_within(samples: np.ndarray, xy: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Min–max normalise x, y within each sample (over all its cells); returns [len(rows), 2]."""
    out = np.empty((len(rows), 2), dtype=np.float32)
    rs = samples[rows]
    for s in np.unique(rs):
        allv = xy[samples == s]
        lo, hi = np.nanmin(allv, axis=0), np.nanmax(allv, axis=0)
        span = hi - lo
        want = rs == s
        v = (xy[rows[want]] - lo) / np.where(span > 0, span, 1.0)
        v[:, span <= 0] = 0.5
        out[want] = v
    return out
