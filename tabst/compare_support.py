"""Helpers of the compare loop (:mod:`tabst.compare`): a model's own feature matrices, the
tuner, the leaderboard's fit notes, labels."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _own_features(cache: dict, FeatureBuilder, f, spec_m: dict, tr, te, save_dir: Path):
    """(Xtr, Xte, names, groups) of a model's own feature set ``spec_m`` (fitted on ``tr``
    once per fold and spec, saved to ``save_dir`` for explain / predict)."""
    key = json.dumps(spec_m, sort_keys=True, default=str)
    if key not in cache:
        fb = FeatureBuilder(spec_m)
        fb.fit(f, tr)
        cache[key] = (fb, np.asarray(fb.transform(f, tr), dtype=np.float32),
                      None if te is None else np.asarray(fb.transform(f, te), dtype=np.float32))
    fb, Xa, Xb = cache[key]
    fb.save(save_dir)
    return Xa, Xb, list(fb.feature_names_), list(fb.feature_groups_)


def _tuner(f, cfg, spec, out: Path, clip: bool, regions, folds):
    """(Tuner or None, {tuned key: model}) for ``cfg["tune"]`` (:mod:`tabst.tuning`)."""
    if not cfg["tune"]["enabled"] or not cfg["tune"]["models"]:
        return None, {}
    from .tuning import Tuner, study_dir

    n = (len(folds) + (1 if cfg["refit_all"] else 0)) * len(cfg["tune"]["models"])
    tuner = Tuner(f, cfg, spec, out_dir=study_dir(out), clip=clip, regions=regions, n_studies=n)
    t = cfg["tune"]
    budget = "" if t["minutes"] is None else f", at most {t['minutes']} min in all"
    sys.stderr.write(f"note: tuning {', '.join(tuner.models)} with Optuna inside each fold "
                     f"({t['trials']} trials per study, {t['inner_folds']} inner folds by "
                     f"sample{budget})\n")
    return tuner, tuner.keys()


def _fit_notes(pf, clip: bool) -> list[str]:
    """Leaderboard notes on how the numbers were made: subsampled fits, clipping."""
    notes = []
    if "n_fit" in pf:
        ok = pf[(pf["status"] == "ok") & (pf["n_fit"] < pf["n_train"])]
        for m, grp in ok.groupby("model", sort=False):
            notes.append(f"{m} was fitted on {int(grp['n_fit'].median()):,} of "
                         f"{int(grp['n_train'].median()):,} training rows per fold (median; "
                         "max_train_cells_per_group); the other models on every row.")
    n = int(pf["n_clipped"].fillna(0).sum()) if clip and "n_clipped" in pf else 0
    if n:
        notes.append(f"{n:,} negative predictions were clipped at 0 before scoring, as `tabst "
                     "predict` writes them (clip_predictions; n_clipped in per_fold.csv).")
    return notes


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _codec_label(model) -> str:
    p = getattr(model, "params", {})
    c = p.get("codec", "identity")
    return f"pca{p.get('codec_k')}" if c == "pca" else str(c)


def write_run_files(tmp: Path, cfg: dict, run: dict, render, run_name: str) -> None:
    """``config.yaml`` and ``run.json`` of a run being built, then its report via ``render``
    (``render(tmp, run_name=...)``; None = not rendered). A rendering failure is logged and
    recorded in ``run.json`` (``report_error``), not fatal: the numbers are worth more than the
    picture; a full disk still stops the run."""
    import traceback

    from .config import dump_config
    from .outputs import is_fatal_io
    from .util import json_default

    (tmp / "config.yaml").write_text(dump_config(cfg))
    (tmp / "run.json").write_text(json.dumps(run, indent=1, default=json_default))
    if render is None:
        return
    try:
        render(tmp, run_name=run_name)
    except Exception as e:
        if is_fatal_io(e):
            raise
        from .compare import _write_log

        _write_log(tmp, "report", traceback.format_exc())
        run["report_error"] = traceback.format_exc().strip().splitlines()[-1]
        (tmp / "run.json").write_text(json.dumps(run, indent=1, default=json_default))
