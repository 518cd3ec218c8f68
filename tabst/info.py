"""Self-description of a store, as data and as text: a one-screen summary, then the full tree.

The summary says what a person asks first (how many samples and spots/cells per sample, how
many genes and on what scale, which embeddings are complete, which features exist); the tree
lists every group and dataset with its description and attrs. On a terminal long lines wrap
and long attr values are abbreviated; piped (not a terminal), nothing is cut, each entry stays
on one line, so the output can be searched with grep.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .spots import diameters as spot_diameters
from .spots import is_spot_store
from .store import attrs_dict, open_store, read_strings, walk

_LONG = 160  # attr values longer than this are abbreviated on a terminal
_MAX_SAMPLES = 24  # samples listed by name in the summary (all of them are in --json)
_MAX_UNIQUE_ROWS = 2_000_000  # text columns up to this many rows get their values counted


def store_info(path) -> dict:
    f = open_store(path)
    try:
        items = walk(f)
        summary = store_summary(f)
    finally:
        f.close()
    return {"store": str(path), "summary": summary, "items": items}


def store_summary(f) -> dict:
    """Samples and rows per sample, genes, transform, embeddings, features of an open store."""
    root = attrs_dict(f)
    prov = _json(root.get("provenance"))
    samples = {}
    if "cells/sample" in f:
        names, counts = np.unique(read_strings(f["cells/sample"]), return_counts=True)
        samples = {str(s): int(c) for s, c in zip(names, counts)}
    platform = str(prov.get("platform") or prov.get("ingest") or "")
    spots = is_spot_store(f)
    diam = spot_diameters({s: f[f"images/{s}"] for s in samples if f"images/{s}" in f})
    X = f["expression/X"] if "expression/X" in f else None
    return {
        "file_bytes": os.path.getsize(f.filename) if os.path.exists(f.filename) else None,
        "created_utc": root.get("created_utc"), "tabst_version": root.get("tabst_version"),
        "platform": platform, "unit": "spots" if spots else "cells",
        "n_rows": int(f["cells/cell_id"].shape[0]) if "cells/cell_id" in f else 0,
        "samples": samples,
        "spot_diameter_px": float(np.median(list(diam.values()))) if diam else None,
        "n_genes": int(f["expression/genes"].shape[0]) if "expression/genes" in f else 0,
        "transform": str(X.attrs.get("transform", X.attrs.get("unit", ""))) if X is not None
        else "",
        "columns": {k: _column(f["cells"][k]) for k in sorted(f["cells"])} if "cells" in f
        else {},
        "embeddings": [_embedding(n, f["embeddings"][n]) for n in sorted(f["embeddings"])]
        if "embeddings" in f else [],
        "features": [_features(n, f["features"][n]) for n in sorted(f["features"])]
        if "features" in f else [],
    }


def _json(v) -> dict:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return {}
    return v if isinstance(v, dict) else {}


def _column(ds) -> str:
    """One word on a /cells column: its dtype, and for a text column with one value, that it is
    constant (a 'tissue' of 'unknown' for every row carries nothing)."""
    if ds.dtype.kind == "O" and ds.ndim == 1 and ds.shape[0]:
        if ds.shape[0] > _MAX_UNIQUE_ROWS:
            return "text"
        vals = np.unique(read_strings(ds))
        return f"text: constant {vals[0]!r}" if len(vals) == 1 else f"text: {len(vals):,} values"
    return str(ds.dtype)


def _embedding(name: str, ds) -> dict:
    a = attrs_dict(ds)
    return {"name": name, "dims": int(ds.shape[1]) if ds.ndim == 2 else 0,
            "complete": bool(a.get("complete", True)), "encoder": a.get("encoder", ""),
            "layer": a.get("layer", ""), "weights": a.get("weights", ""),
            "patch_size": a.get("patch_size", "")}


def _features(name: str, ds) -> dict:
    a = attrs_dict(ds)
    groups = a.get("groups") if isinstance(a.get("groups"), list) else []
    return {"name": name, "n_columns": int(ds.shape[1]) if ds.ndim == 2 else 0,
            "groups": {g: groups.count(g) for g in dict.fromkeys(groups)},
            "complete": bool(a.get("complete", True))}


def _fmt(v, full: bool) -> str:
    if isinstance(v, str) and v[:1] in "{[":
        try:
            v = json.dumps(json.loads(v), separators=(", ", ": "))
        except ValueError:
            pass
    s = str(v) if v != "" else '""'
    return s if full or len(s) <= _LONG else s[:_LONG] + f"... ({len(s)} chars; pipe or --json " \
                                                          "for all)"


def summary_lines(s: dict) -> list[tuple[str, str]]:
    """The summary as (key, text) rows."""
    unit = s["unit"]
    n_s = len(s["samples"])
    per = " · ".join(f"{k} {v:,}" for k, v in list(s["samples"].items())[:_MAX_SAMPLES])
    if n_s > _MAX_SAMPLES:
        per += f" · and {n_s - _MAX_SAMPLES} more (all in --json)"
    rows = [("rows", f"{s['n_rows']:,} {unit} in {n_s} sample(s)"
                     + (f" ({s['platform']})" if s["platform"] else "")
                     + (f", spot diameter {s['spot_diameter_px']:.1f} px"
                        if s["spot_diameter_px"] else "")),
            (f"{unit} per sample", per or "none"),
            ("genes", f"{s['n_genes']:,}" + (f", X = {s['transform']}" if s["transform"]
                                              else ""))]
    embs = [f"{e['name']} ({e['dims']} dims, {'complete' if e['complete'] else 'INCOMPLETE'}"
            + (f", {e['encoder']} {e['layer']}".rstrip() if e["encoder"] else "")
            + (f", {e['weights']} weights" if e["weights"] else "")
            + (f", patch {e['patch_size']}" if e["patch_size"] != "" else "") + ")"
            for e in s["embeddings"]]
    rows.append(("embeddings", "; ".join(embs) or "none (run `tabst embed`)"))
    feats = [f"{x['name']} ({x['n_columns']} columns"
             + ("".join(f", {g} {n}" for g, n in x["groups"].items()) if x["groups"] else "")
             + ("" if x["complete"] else ", INCOMPLETE") + ")" for x in s["features"]]
    rows.append(("features", "; ".join(feats) or "none"))
    rows.append(("/cells columns", ", ".join(f"{k} ({v})" for k, v in s["columns"].items())))
    size = f"{s['file_bytes'] / 1e6:,.1f} MB" if s.get("file_bytes") is not None else "?"
    rows.append(("written", f"{s.get('created_utc') or '?'} by tabst "
                            f"{s.get('tabst_version') or '?'} · {size}"))
    return rows


def render_info(data: dict, console) -> None:
    """Print the summary, then the tree. Piped (``console.is_terminal`` false), nothing is cut:
    the console is widened for the call so every entry stays whole on one line."""
    full = not console.is_terminal
    width = console.width
    if full:
        console.width = 1 << 20
    try:
        if full:  # aligned lines, no padding to the (widened) console width
            rows = [("store", str(data["store"]))] + summary_lines(data["summary"])
            kw = max(len(k) for k, _ in rows)
            for k, v in rows:
                console.print(f"{k:<{kw}}  {v}", markup=False, highlight=False)
        else:
            console.print(_summary_table(data), soft_wrap=False)
        console.print()
        console.print(_tree(data, full), soft_wrap=False if not full else None)
    finally:
        console.width = width


def _summary_table(data: dict):
    from rich.markup import escape
    from rich.table import Table

    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    t.add_row("store", escape(str(data["store"])))
    for k, v in summary_lines(data["summary"]):
        t.add_row(escape(k), escape(v))
    return t


def _tree(data: dict, full: bool):
    from rich.markup import escape
    from rich.tree import Tree

    root = Tree(f"[bold]{escape(str(data['store']))}[/]")
    nodes = {"/": root}
    for it in data["items"]:
        path = it["path"]
        attrs = dict(it["attrs"])
        desc = attrs.pop("description", "")
        if path == "/":
            node = root
        else:
            parent = nodes[path.rsplit("/", 1)[0] or "/"]
            name = escape(path.rsplit("/", 1)[1])
            if it["kind"] == "dataset":
                unit = attrs.pop("unit", None)
                label = (f"[cyan]{name}[/] [green]{it['dtype']}{tuple(it['shape'])}[/]"
                         f" chunks={tuple(it['chunks']) if it['chunks'] else None}"
                         + (f" unit={escape(str(unit))}" if unit else ""))
            else:
                label = f"[bold blue]{name}/[/]"
            node = parent.add(label + (f" — {escape(str(desc))}" if desc else ""))
            nodes[path] = node
        for k, v in attrs.items():
            node.add(f"[dim]@{escape(k)}[/] = {escape(_fmt(v, full))}")
    return root
