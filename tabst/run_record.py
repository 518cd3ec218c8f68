"""``run.json`` of a `tabst compare` run: what was run, on what, with which versions."""
from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .config import model_params
from .evaluate import METRIC_DIRECTION, METRIC_LABEL
from .store import now_utc

VERSION_PACKAGES = ("tabst", "numpy", "scipy", "scikit-learn", "pandas", "h5py", "xgboost", "torch",
                    "torchvision", "timm", "pytorch-tabnet", "shap", "matplotlib", "jinja2")


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for p in VERSION_PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out



def run_record(cfg, store_path: Path, info: dict, command) -> dict:
    import h5py

    with h5py.File(store_path, "r") as f:
        root = _attrs(f)
        n_cells = int(f["cells/cell_id"].shape[0])
        transform = f["expression/X"].attrs.get("transform", "")
    st = store_path.stat()
    return {
        "kind": "tabst compare run", "complete": True, "created_utc": now_utc(),
        "command": list(command) if command is not None else list(sys.argv),
        "config_name": cfg["name"], "primary_metric": cfg["primary_metric"],
        "ranked_by": info["ranked_by"], "leaderboard_notes": info["leaderboard_notes"],
        "metric_labels": METRIC_LABEL, "metric_direction": METRIC_DIRECTION,
        "unsafe_random_split": bool(cfg["unsafe_random_split"]), "folds_scheme": cfg["folds"],
        "folds": info["folds"], "group_column": info["group_column"],
        "group_column_config": cfg["group_column"], "fold_unit": info["fold_unit"],
        "warnings": info["warnings"], "clipped_at_zero": info["clipped_at_zero"],
        "estimate": info["estimate"],
        "region_column": info["region_column"], "region_column_config": cfg["region_column"],
        "seeds": {"seed": cfg["seed"],
                  "models": {m: model_params(cfg, m)["seed"] for m in cfg["models"]}},
        "store": {"path": str(store_path), "bytes": st.st_size,
                  "mtime_utc": datetime.fromtimestamp(st.st_mtime, timezone.utc)
                  .strftime("%Y-%m-%dT%H:%M:%SZ"),
                  "created_utc": root.get("created_utc"),
                  "tabst_version": root.get("tabst_version"),
                  "provenance": root.get("provenance"), "n_cells": n_cells,
                  "n_cells_evaluated": info["n_rows"], "n_genes": info["n_store_genes"],
                  "samples": info["samples"],
                  "expression_transform": transform.decode() if isinstance(transform, bytes)
                  else str(transform)},
        "gene_selection": info["gene_selection"],
        "embedding": info["embedding"], "feature_spec": info["feature_spec"],
        "features": info["features"], "models": cfg["models"], "labels": info["labels"],
        "refit": info["refit"], "timing": info["timing"], "tuning": info.get("tuning"),
        "cluster": info.get("cluster"),
        "versions": package_versions(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
    }



def _attrs(obj) -> dict:
    from .store import attrs_dict

    out = {}
    for k, v in attrs_dict(obj).items():
        if isinstance(v, str) and v[:1] in "{[":
            try:
                v = json.loads(v)
            except ValueError:
                pass
        if isinstance(v, float) and not np.isfinite(v):
            v = None
        out[k] = v
    return out
