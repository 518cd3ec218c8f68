"""report.html's "Hyperparameter tuning" section (tabst/report/tuning.py) on a small tuned run."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from chromium_probe import render_probe
from conftest import write_tiny_store

from tabst.compare import run_compare
from tabst.report.common import fmt
from tabst.report.render import render_report

OVR = ["features.neighbourhood=null", "xgboost.n_estimators=20"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("reptune")
    store = write_tiny_store(d / "tiny.h5", n_samples=4, cells_per_sample=60)
    tuned = run_compare(store, "quick", d / "tuned", models="tree,xgboost",
                        overrides=["tune.enabled=true", "tune.trials=4", *OVR],
                        show_progress=False)
    plain = run_compare(store, "quick", d / "plain", models="tree", overrides=OVR,
                        show_progress=False)
    for r in (tuned, plain):   # compare keeps a run whose report failed: it must not have
        assert "report_error" not in json.loads((r / "run.json").read_text())
    return tuned, plain


def _section(html: str) -> str:
    m = re.search(r'<section id="tuning">(.*?)</section>', html, flags=re.S)
    assert m, "no tuning section"
    return m.group(1)


def _cells(row_html: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c).strip()
            for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row_html, flags=re.S)]


def test_tuning_section_history_params_importances(runs):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from PIL import Image

    run_dir = runs[0]
    html = (run_dir / "report.html").read_text()
    assert "<script" not in html and not re.search(r'(src|href)\s*=\s*"(?!data:)', html)
    sec = _section(html)
    assert "<h2>Hyperparameter tuning</h2>" in sec
    # the section comes right after the leaderboard
    assert html.index('id="leaderboard"') < html.index('id="tuning"') < html.index('id="features"')
    run = json.loads((run_dir / "run.json").read_text())
    spaces = run["tuning"]["spaces"]
    for m in ("tree", "xgboost"):
        block = re.search(rf'<div class="tuning-model" id="tuning-{m}">(.*?)</div>\s*(?=<div|$)',
                          sec, flags=re.S).group(1)
        img = re.search(r'class="tuning-history"[^>]*src="data:image/png;base64,([^"]+)"',
                        block).group(1)
        im = Image.open(io.BytesIO(base64.b64decode(img)))
        im.load()
        assert im.width > 400 and im.height > 150
        # best parameters: one row per searched parameter, a column per outer fold + the refit
        params = re.search(r'<table class="num tuning-params">(.*?)</table>', block, re.S).group(1)
        rows = {c[0]: c for c in map(_cells, re.findall(r"<tr>(.*?)</tr>", params, re.S))}
        folds = sorted(run["tuning"]["models"][m], key=lambda f: (f == "all", f))
        assert rows["parameter"][3:3 + len(folds)] == [f"fold {f}" if f != "all" else
                                                        "refit (all)" for f in folds]
        for p in [*spaces[m], *spaces["features"]]:
            assert p in rows, p
            chosen = [{**run["tuning"]["models"][m][f]["params"],
                       **run["tuning"]["models"][m][f]["features"]}[p] for f in folds]
            got = rows[p][3:3 + len(folds)]
            for v, g in zip(chosen, got):
                assert g == (str(int(v)) if float(v).is_integer() else f"{v:.3g}"), (p, v, g)
            assert rows[p][-1] and rows[p][-1] != "—"   # a stability entry
        # importances: Optuna's fANOVA per outer fold's study, averaged
        imp = re.search(r'<table class="num tuning-importance">(.*?)</table>', block, re.S)
        assert imp, block[-2000:]
        shown = {c[0]: c[1] for c in map(_cells, re.findall(r"<tr>(.*?)</tr>", imp.group(1),
                                                            re.S)) if c[0] != "parameter"}
        per = []
        for f in (f for f in folds if f != "all"):
            st = JournalStorage(JournalFileBackend(str(run_dir / "tuning" / m / f"fold_{f}.log")))
            s = optuna.load_study(study_name=optuna.study.get_all_study_names(st)[0], storage=st)
            per.append(optuna.importance.get_param_importances(
                s, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)))
        keys = set().union(*per)
        assert set(shown) == keys == set(spaces[m]) | set(spaces["features"])
        for k in keys:
            assert shown[k] == fmt(np.mean([d.get(k, 0.0) for d in per]), 3)


def test_tuning_gain_equals_leaderboard(runs):
    run_dir = runs[0]
    sec = _section((run_dir / "report.html").read_text())
    lb = pd.read_csv(run_dir / "leaderboard.csv").set_index("model")
    trials = pd.read_csv(run_dir / "tuning.csv", dtype={"fold": str})
    run = json.loads((run_dir / "run.json").read_text())
    assert run["ranked_by"] == "cellwise_spearman"
    gain = re.search(r'<table class="num" id="tuning-gain">(.*?)</table>', sec, re.S).group(1)
    got = {}
    for m, row in re.findall(r'<tr class="gain-row" data-model="([^"]+)">(.*?)</tr>', gain, re.S):
        c = _cells(row)
        got[(m, c[-5])] = c[-4:]
    labels = run["metric_labels"]
    assert len(got) == 2 * 3
    for m in ("tree", "xgboost"):
        for met in ("cellwise_spearman", "genewise_pearson", "mse"):
            d, t, delta, rel = got[(m, labels[met])]
            for key, cell in ((m, d), (m + "+tuned", t)):
                r = lb.loc[key]
                assert cell == f"{fmt(r[f'{met}_mean'])} ± {fmt(r[f'{met}_sd'])}"
            dd = lb.loc[m + "+tuned", f"{met}_mean"] - lb.loc[m, f"{met}_mean"]
            assert delta == ("0" if dd == 0 else f"{dd:+.3f}")
            sign = -1 if met == "mse" else 1
            if dd != 0:
                assert rel == f"{sign * dd / abs(lb.loc[m, f'{met}_mean']) * 100:+.1f} %"
    # the effort table: trials, pruned and failed of every study of the model (tuning.csv)
    eff = re.search(r'<table class="num" id="tuning-effort">(.*?)</table>', sec, re.S).group(1)
    rows = {c[0]: c for c in (_cells(r) for r in re.findall(r"<tr>(.*?)</tr>", eff, re.S))}
    for m in ("tree", "xgboost"):
        t, c = trials[trials["model"] == m], rows[run["labels"][m + "+tuned"]]
        assert c[1:4] == [str(len(t)), str((t["state"] == "pruned").sum()),
                          str((t["state"] == "fail").sum())]
        assert re.fullmatch(r"\d/4 folds( \(\d tied\))?", c[-1])


def test_untuned_run_has_no_tuning_section(runs):
    html = (runs[1] / "report.html").read_text()
    assert 'id="tuning"' not in html and "Hyperparameter tuning" not in html
    assert "(tuned)" not in html and 'id="leaderboard"' in html
    assert ".bar {" not in html and "gain-better" not in html   # not even the section's CSS


def test_tuning_section_without_journals(runs, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(runs[0], run_dir)
    (run_dir / "tuning" / "xgboost" / "fold_0.log").unlink()
    shutil.rmtree(run_dir / "tuning" / "tree")   # tree: no journal but a damaged one
    (run_dir / "tuning" / "tree").mkdir()
    (run_dir / "tuning" / "tree" / "fold_1.log").write_bytes(b"\x00garbage")
    html = render_report(run_dir).read_text()
    sec = _section(html)
    assert sec.count('class="tuning-history"') == 2          # the history is from tuning.csv
    assert "no journal tuning/xgboost/fold_0.log" in sec
    assert "journal tuning/tree/fold_1.log unreadable" in sec
    assert "no journal tuning/tree/fold_0.log" in sec
    assert "No parameter importances for tree." in sec
    assert not (run_dir / "tuning" / "xgboost" / "fold_0.log").exists()  # nothing created
    assert sec.count('class="num tuning-importance"') == 1   # xgboost: from its other folds
    # without tuning.csv too: still a section, from run.json, saying what is missing
    (run_dir / "tuning.csv").unlink()
    sec = _section(render_report(run_dir).read_text())
    assert "tuning.csv is missing" in sec and 'class="tuning-history"' not in sec
    assert sec.count('class="num tuning-params"') == 2


def test_tuning_section_in_headless_chromium(runs, tmp_path):
    html = (runs[0] / "report.html").read_text()
    check = """<script>
document.addEventListener('DOMContentLoaded', function () {
  var s = document.getElementById('tuning'), r = s.getBoundingClientRect(), st = getComputedStyle(s);
  window.__errs.push('TUNING:' + JSON.stringify({h: r.height, w: r.width, display: st.display,
    visibility: st.visibility, imgs: s.querySelectorAll('img.tuning-history').length,
    rows: s.querySelectorAll('table.tuning-params tbody tr').length,
    bars: s.querySelectorAll('table.tuning-importance .bar').length}));
});
</script>"""
    out = render_probe(html.replace("</head>", check + "</head>", 1), tmp_path)
    tun = [e for e in out["errors"] if e.startswith("TUNING:")]
    assert [e for e in out["errors"] if not e.startswith("TUNING:")] == []
    assert len(tun) == 1, out
    t = json.loads(tun[0][len("TUNING:"):])
    assert t["h"] > 500 and t["w"] > 500 and t["display"] != "none" and t["visibility"] == "visible"
    assert t["imgs"] == 2 and t["rows"] > 0 and t["bars"] > 0
    assert out["n"] >= 6 and out["decoded"] == out["n"], out
