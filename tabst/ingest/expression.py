"""Expression file readers: one class per cells x genes layout, all with the same ``genes`` /
``iter_chunks()`` interface (see :class:`ExpressionReader`), plus :func:`open_expression` (by
suffix) and :func:`select_genes` (the gene list to ingest across files).

Values are not checked here: :func:`tabst.ingest.common.write_expression_streaming` checks
every chunk with :func:`tabst.ingest.checks.check_expression_block`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from .tabular import DEFAULT_CHUNK_ROWS, _require_file, iter_table_batches, table_columns, table_format


class ExpressionReader:
    """A cells x genes expression file read in row chunks.

    Attributes
    ----------
    path : Path
    id_column : str
        where the cell ids come from (for messages).
    genes : list of str
        all gene names of the file, in file order.

    ``iter_chunks(genes, chunk_rows)`` yields ``(ids, values, first_row)``: ``ids`` a pyarrow
    string array of cell ids, ``values`` float32 [k, len(genes)] in the order of ``genes``,
    ``first_row`` the 1-based data row of the chunk's first row in the file.
    """

    path: Path
    id_column: str
    genes: list
    row_label = "row"  # how rows of this file are called in messages

    def iter_chunks(self, genes: Sequence[str], chunk_rows: int = DEFAULT_CHUNK_ROWS):
        raise NotImplementedError


class TableExpression(ExpressionReader):
    """CSV/TSV/Parquet: one id column, one numeric column per gene."""

    def __init__(self, path, id_column: str | None = None, gene_columns: Sequence[str] | None = None,
                 id_candidates: Sequence[str] = ("cell_id",)):
        self.path = Path(path)
        cols = table_columns(self.path)
        if id_column is None:
            id_column = next((c for c in id_candidates if c in cols), cols[0])
        elif id_column not in cols:
            raise InputError("cell id column not found in the expression file", file=self.path,
                             column=id_column,
                             fix=f"pass the right id column (columns: {_preview(cols)})")
        self.id_column = id_column
        if gene_columns is None:
            gene_columns = [c for c in cols if c != id_column]
        self.genes = list(gene_columns)
        if not self.genes:
            raise InputError("no gene columns", file=self.path,
                             fix="the file needs a cell id column and one column per gene")

    def iter_chunks(self, genes, chunk_rows=DEFAULT_CHUNK_ROWS):
        import pyarrow as pa

        cols = {self.id_column: "str", **{g: "float" for g in genes}}
        if self.id_column in genes:
            raise InputError("the cell id column is also listed as a gene", file=self.path,
                             column=self.id_column, fix="remove it from the gene list")
        row = 1
        pending, n_pending = [], 0
        for b in iter_table_batches(self.path, cols, batch_rows=chunk_rows):
            pending.append(b)
            n_pending += b.num_rows
            if n_pending < chunk_rows:
                continue
            t = pa.Table.from_batches(pending).combine_chunks()
            start = 0
            while t.num_rows - start >= chunk_rows:
                yield self._emit(t.slice(start, chunk_rows), row)
                row += chunk_rows
                start += chunk_rows
            rest = t.slice(start)
            pending, n_pending = rest.to_batches(), rest.num_rows
        if n_pending:
            yield self._emit(pa.Table.from_batches(pending).combine_chunks(), row)

    @staticmethod
    def _emit(t, row):
        ids = t.column(0).combine_chunks()
        k, G = t.num_rows, t.num_columns - 1
        vals = np.empty((k, G), dtype=np.float32)
        for j in range(G):
            vals[:, j] = t.column(j + 1).to_numpy()
        return ids, vals, row


class H5MatrixExpression(ExpressionReader):
    """HDF5 matrix layout: datasets ``X`` [cells, genes] (numeric), ``cell_id`` [cells] and
    ``genes`` [genes] (strings or integers) at the file's root."""

    def __init__(self, path, id_column: str | None = None):
        import h5py

        self.path = Path(path)
        self.id_column = id_column or "cell_id"
        try:
            with h5py.File(self.path, "r") as f:
                for k in ("X", self.id_column, "genes"):
                    if k not in f or not isinstance(f[k], h5py.Dataset):
                        raise InputError(
                            f"no dataset '/{k}'", file=self.path,
                            fix="an HDF5 expression matrix needs datasets X [cells, genes], "
                                "cell_id [cells] and genes [genes] at its root (or use .h5ad)")
                X, ids, genes = f["X"], f[self.id_column], f["genes"]
                if X.ndim != 2 or X.shape != (ids.shape[0], genes.shape[0]):
                    raise InputError(
                        f"X has shape {X.shape} but there are {ids.shape[0]} cell ids and "
                        f"{genes.shape[0]} genes", file=self.path, column="X",
                        fix="X must be cells x genes, matching cell_id and genes")
                if X.dtype.kind not in "fiub":
                    raise InputError(f"X is not numeric ({X.dtype})", file=self.path, column="X",
                                     fix="store numbers in X")
                self.genes = _h5_strings(genes[()])
                self.n = int(X.shape[0])
        except InputError:
            raise
        except OSError as e:
            raise InputError(f"not a readable HDF5 file ({e})", file=self.path,
                             fix="check the file") from None

    def iter_chunks(self, genes, chunk_rows=DEFAULT_CHUNK_ROWS):
        import h5py
        import pyarrow as pa

        cols = _gene_index(self.genes, genes)
        with h5py.File(self.path, "r") as f:
            X, ids = f["X"], f[self.id_column]
            for a in range(0, self.n, chunk_rows):
                b = min(self.n, a + chunk_rows)
                block = X[a:b]
                yield (pa.array(_h5_strings(ids[a:b]), type=pa.string()),
                       np.ascontiguousarray(block[:, cols], dtype=np.float32), a + 1)


class H5adExpression(ExpressionReader):
    """AnnData ``.h5ad`` read with h5py: dense or CSR ``X`` (or a layer) in row slices; cell ids
    from the obs index (or an obs column); genes from the var index. CSC matrices are read via
    anndata's backed mode."""

    row_label = "obs row"

    def __init__(self, path, id_column: str | None = None, layer: str | None = None):
        import h5py

        self.path = Path(path)
        self.layer = layer
        try:
            with h5py.File(self.path, "r") as f:
                if "obs" not in f or "var" not in f or ("X" not in f and layer is None):
                    raise InputError("not an AnnData file (no obs/var/X)", file=self.path,
                                     fix="write it with anndata's write_h5ad")
                obs, var = f["obs"], f["var"]
                if not isinstance(obs, h5py.Group):
                    raise InputError("AnnData file in the pre-0.7 format", file=self.path,
                                     fix="re-save it with a current anndata (read_h5ad + write_h5ad)")
                self.index_name = _attr_str(obs, "_index", "_index")
                self.id_column = id_column or self.index_name
                if self.id_column not in obs:
                    raise InputError("obs has no such column", file=self.path,
                                     column=self.id_column,
                                     fix=f"obs columns: {_preview(list(obs.keys()))}")
                vname = _attr_str(var, "_index", "_index")
                self.genes = _h5_strings(var[vname][()])
                xpath = "X" if layer is None else f"layers/{layer}"
                if xpath not in f:
                    raise InputError(f"no layer '{layer}'", file=self.path,
                                     fix=f"layers: {_preview(list(f.get('layers', {}).keys()))}")
                self.xpath = xpath
                X = f[xpath]
                if isinstance(X, h5py.Dataset):
                    self.fmt = "dense"
                    self.n = int(X.shape[0])
                else:
                    self.fmt = _attr_str(X, "encoding-type", "")
                    if self.fmt not in ("csr_matrix", "csc_matrix"):
                        raise InputError(f"unsupported X encoding '{self.fmt}'", file=self.path,
                                         fix="store X dense or as a CSR/CSC sparse matrix")
                    self.n = int(X.attrs["shape"][0])
                nobs = obs[self.id_column].shape[0] if isinstance(obs[self.id_column], h5py.Dataset) \
                    else None
                if nobs is not None and nobs != self.n:
                    raise InputError(f"obs has {nobs} rows but X has {self.n}", file=self.path,
                                     fix="the file is inconsistent; re-save it with anndata")
        except InputError:
            raise
        except OSError as e:
            raise InputError(f"not a readable .h5ad file ({e})", file=self.path,
                             fix="check the file") from None

    def _ids(self, obs, a, b):
        import h5py

        node = obs[self.id_column]
        if isinstance(node, h5py.Group):  # categorical obs column
            codes = node["codes"][a:b]
            cats = np.asarray(_h5_strings(node["categories"][()]), dtype=object)
            return [cats[c] if c >= 0 else "" for c in codes]
        return _h5_strings(node[a:b])

    def iter_chunks(self, genes, chunk_rows=DEFAULT_CHUNK_ROWS):
        import h5py
        import pyarrow as pa

        cols = _gene_index(self.genes, genes)
        if self.fmt == "csc_matrix":
            import anndata as ad

            adata = ad.read_h5ad(self.path, backed="r")
            try:
                obs_names = adata.obs_names if self.id_column == self.index_name \
                    else adata.obs[self.id_column].astype(str)
                X = adata.X if self.layer is None else adata.layers[self.layer]
                for a in range(0, self.n, chunk_rows):
                    b = min(self.n, a + chunk_rows)
                    block = X[a:b]
                    block = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
                    yield (pa.array([str(v) for v in obs_names[a:b]], type=pa.string()),
                           np.ascontiguousarray(block[:, cols], dtype=np.float32), a + 1)
            finally:
                adata.file.close()
            return
        with h5py.File(self.path, "r") as f:
            X, obs = f[self.xpath], f["obs"]
            if self.fmt == "csr_matrix":
                import scipy.sparse as sp

                indptr = X["indptr"][()]
                ncol = int(X.attrs["shape"][1])
            for a in range(0, self.n, chunk_rows):
                b = min(self.n, a + chunk_rows)
                if self.fmt == "dense":
                    block = X[a:b][:, cols]
                else:
                    lo, hi = int(indptr[a]), int(indptr[b])
                    m = sp.csr_matrix((X["data"][lo:hi], X["indices"][lo:hi], indptr[a:b + 1] - lo),
                                      shape=(b - a, ncol))
                    block = m[:, cols].toarray()
                yield (pa.array(self._ids(obs, a, b), type=pa.string()),
                       np.ascontiguousarray(block, dtype=np.float32), a + 1)


def _attr_str(obj, key, default):
    v = obj.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def _h5_strings(arr) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(arr).tolist()]


def _preview(items: Sequence[str], n: int = 12) -> str:
    items = list(items)
    s = ", ".join(map(str, items[:n]))
    return s + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _gene_index(all_genes: Sequence[str], genes: Sequence[str]) -> np.ndarray:
    pos = {g: i for i, g in enumerate(all_genes)}
    return np.asarray([pos[g] for g in genes], dtype=np.int64)


def open_expression(path, *, id_column: str | None = None, layer: str | None = None,
                    id_candidates: Sequence[str] = ("cell_id",)) -> ExpressionReader:
    """Open a separate cells x genes expression file by its suffix.

    ``.csv/.tsv/.tab/.txt[.gz|.bz2]`` and ``.parquet``: an id column (``id_column``, else the
    first of ``id_candidates`` present, else the first column) plus one numeric column per gene.
    ``.h5ad``: AnnData (obs index = cell id unless ``id_column`` names an obs column; ``layer``
    picks ``layers/<name>`` instead of X). ``.h5/.hdf5``: datasets ``X``, ``cell_id``, ``genes``.
    """
    path = Path(path)
    _require_file(path, "expression file")
    sfx = path.suffix.lower()
    if sfx == ".h5ad":
        return H5adExpression(path, id_column=id_column, layer=layer)
    if sfx in (".h5", ".hdf5", ".he5"):
        return H5MatrixExpression(path, id_column=id_column)
    table_format(path)  # raises for unknown suffixes
    return TableExpression(path, id_column=id_column, id_candidates=id_candidates)


def select_genes(readers: Sequence[ExpressionReader], genes: Sequence[str] | None = None,
                 prefix: str | None = None) -> list[str]:
    """The gene list to ingest: every reader must have the same genes (any order); ``genes``
    picks some of them (in that order), ``prefix`` keeps the ones starting with it."""
    first = readers[0]
    base = set(first.genes)
    for r in readers[1:]:
        other = set(r.genes)
        if other != base:
            missing = [g for g in first.genes if g not in other]
            extra = [g for g in r.genes if g not in base]
            raise InputError(
                "its gene list differs from that of " + str(first.path)
                + (f"; missing: {_preview(missing, 8)}" if missing else "")
                + (f"; extra: {_preview(extra, 8)}" if extra else ""),
                file=r.path, fix="give every sample's expression file the same genes")
    out = list(first.genes)
    if prefix:
        out = [g for g in out if g.startswith(prefix)]
        if not out:
            raise InputError(f"no column starts with the gene prefix '{prefix}'", file=first.path,
                             fix=f"columns: {_preview(first.genes)}")
    if genes is not None:
        missing = [g for g in genes if g not in base]
        if missing:
            raise InputError("gene not found", file=first.path, column=missing[0],
                             fix=f"{len(missing)} listed gene(s) are missing: {_preview(missing, 8)}")
        if len(set(genes)) != len(genes):
            dup = next(g for g in genes if list(genes).count(g) > 1)
            raise InputError("gene listed twice", column=dup, fix="list each gene once")
        out = list(genes)
    seen = set()
    for g in out:
        if g in seen:
            raise InputError("gene name appears twice", file=first.path, column=g,
                             fix="give every gene a unique name")
        seen.add(g)
    return out

