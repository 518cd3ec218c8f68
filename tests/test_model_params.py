"""Every model checks every parameter at construction (issue 13, hardening): a bad
``--set model.param=value`` stops ``tabst compare`` with exit 1 and a message naming the key,
before anything is written or fitted."""
from __future__ import annotations

import pytest
import yaml
from conftest import write_tiny_store
from tabst_cli.app import app
from typer.testing import CliRunner

from tabst.config import load_config, preset_names
from tabst.models import REGISTRY, make_model, model_defaults
from tabst.models.params import COMMON_RULES, ParamError, check_param


def _bad_values(rule: dict) -> list:
    """Values outside a rule (one per way of breaking it)."""
    kind, low, high = rule["kind"], rule.get("low"), rule.get("high")
    out = [] if rule.get("none_ok") else [None]
    if kind in ("int", "float"):
        out.append("hello")
        if kind == "int":
            out.append(2.5)
        if low is not None:
            out.append(low if rule.get("low_open") else low - 1)
        if high is not None:
            out.append(high if rule.get("high_open") else high + 1)
    elif kind == "bool":
        out.append("yes")
    elif kind == "word":
        out.append("nonsense")
    elif kind == "floats":
        out += ["hello", [], [1, "x"]] + ([[low]] if rule.get("low_open") else [[low - 1]])
    elif kind == "words":
        out += [5, ["embedding", 3], [""]]
    return out


def _cases():
    for name, cls in REGISTRY.items():
        for param, rule in {**COMMON_RULES, **cls.RULES}.items():
            for bad in _bad_values(rule):
                yield name, param, bad


CASES = list(_cases())
# the values issue 13 reported, plus cross-parameter and special cases
REPORTED = [("ridge", "alphas", "hello"), ("ridge", "cv", -1), ("tree", "max_depth", -3),
            ("ridge", "alphas", [0.1, -1]), ("tree", "max_features", 3.5),
            ("xgboost", "device", "tpu"), ("tabnet", "batch_size", True),
            ("mean", "codec", "pca0"), ("xgboost", "learning_rate", 0)]


def test_every_parameter_has_a_rule():
    for name, cls in REGISTRY.items():
        assert set(model_defaults(name)) == set(COMMON_RULES) | set(cls.RULES), name
        make_model(name)  # the defaults follow the rules


@pytest.mark.parametrize("preset", preset_names())
def test_shipped_presets_pass(preset):
    cfg = load_config(preset)
    assert cfg["models"]
    for name in cfg["models"]:
        given = cfg["params"].get(name) or {}
        m = make_model(name, given)
        assert {k: m.get_params()[k] for k in given} == given  # built with the preset's values


@pytest.mark.parametrize("name,param,bad", CASES + REPORTED,
                         ids=[f"{n}.{p}={b!r}" for n, p, b in CASES + REPORTED])
def test_model_refuses_bad_value(name, param, bad):
    with pytest.raises(ParamError) as e:
        make_model(name, {param: bad})
    assert e.value.model == name and e.value.param == param
    assert str(e.value).startswith(f"{name}.{param} must be ") and repr(bad) in str(e.value)


def test_good_values_pass():
    make_model("ridge", {"alphas": [0.5, 2], "cv": 2, "precision": "float64"})
    make_model("tree", {"max_depth": None, "max_features": 5, "codec": "pca16"})
    make_model("tree", {"max_features": 0.5})
    make_model("xgboost", {"device": "cuda:1", "early_stopping_rounds": None, "n_jobs": -1})
    make_model("tabnet", {"batch_size": "auto", "grouped_features": "embedding",
                          "n_independent": 0, "n_shared": 1})
    with pytest.raises(ParamError, match="tabnet.n_shared must be an integer >= 1 when"):
        make_model("tabnet", {"n_independent": 0, "n_shared": 0})


def test_check_param_words():
    with pytest.raises(ParamError, match=r"^m.p must be null, 'auto' or an integer >= 2 and "
                                         r"<= 9, got 1\.$"):
        check_param("m.p", 1, "int", low=2, high=9, choices=("auto",), none_ok=True)
    with pytest.raises(ParamError, match="a non-empty list of numbers, each > 0"):
        check_param("m.p", float("nan"), "floats", low=0, low_open=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("params")
    return write_tiny_store(d / "tiny.h5", n_samples=2, cells_per_sample=20, n_genes=4, emb_dim=6)


CLI_CASES = REPORTED + [CASES[i] for i in range(0, len(CASES), 3)]


@pytest.mark.parametrize("name,param,bad", CLI_CASES,
                         ids=[f"{n}.{p}={b!r}" for n, p, b in CLI_CASES])
def test_compare_refuses_bad_set_before_writing(tmp_path, store, name, param, bad):
    out = tmp_path / "run"
    value = yaml.safe_dump(bad, default_flow_style=True).strip().removesuffix("...").strip()
    r = CliRunner().invoke(app, ["compare", store, "--models", name, "--out", str(out),
                                 "--set", f"{name}.{param}={value}"])
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert f"params.{name}.{param}" in r.output and f"--set {name}.{param}" in r.output
    assert repr(bad) in r.output and "must be" in r.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_compare_refuses_negative_run_seed(tmp_path, store):
    r = CliRunner().invoke(app, ["compare", store, "--out", str(tmp_path / "r"),
                                 "--set", "seed=-2"])
    assert r.exit_code == 1 and "'seed' must be an integer >= 0" in r.output
