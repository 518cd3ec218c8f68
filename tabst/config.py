"""Run configuration for ``tabst compare``: YAML presets, dotted overrides, validation.

A config is a plain dict (so it round-trips through YAML into the run folder). Presets live in
``configs/<name>.yaml`` (``default``, ``quick``, ``crunch1``, ``hest``, ``hest-benchmark``) and are
found by name or by path::

    cfg = load_config("crunch1", overrides=["ridge.alphas=[0.1,1,10]", "folds=group-kfold:3"])

Keys (everything optional in a file; missing keys take the defaults of :data:`DEFAULTS`):

``name`` / ``description``
    Shown in the report (and ``name`` in compare's warnings).
``embedding``
    Name of ``/embeddings/<name>`` in the store; ``null`` picks the only embedding, or the one
    matching ``embed`` (layer, patch size) when there are several. A list of names (``[a, b]``,
    ``--features a,b``) runs every model on every embedding with the same folds, one sub-run
    each (:mod:`tabst.compare_multi`); a list of one name is that name.
``features``
    Feature-set spec handed to :class:`tabst.dataset.FeatureBuilder` (validated by it).
``models``
    Registry names to compare (``mean`` is always added).
``params``
    Per-model parameters, ``params.<model>.<param>``: names checked against the model's
    defaults, values against its rules (:mod:`tabst.models.params`), for every model listed.
    On the command line ``--set ridge.alphas=[0.1,1]`` is short for ``params.ridge.alphas``.
``folds``
    ``leave-one-sample-out`` | ``group-kfold:K`` | ``random:K`` (needs ``unsafe_random_split``).
``group_column`` / ``region_column``
    ``/cells`` columns: the fold unit and the region used when averaging the cell-wise metrics.
    ``group_column: auto`` (the default) = ``/cells/patient`` (spot ingest's ``--patient``), or
    else ``/cells/group``, when it names patients (every sample in one value, >= 2 values;
    Crunch's train/validation/test split in ``group`` is not one), else sample; ``null`` =
    sample; a name = that column (:func:`tabst.run_inputs.resolve_group_column`; the run
    records which and why).
    ``region_column: auto`` (default): ``/cells/region`` when the store has it, as Crunch
    stores do, else region = sample; ``null``: region = sample.
``expect_transform``
    The ``/expression/X`` ``transform`` the preset's numbers assume (``hest-benchmark``:
    ``log1p(count)``); compare warns when the store's differs. ``null``: no expectation.
``clip_predictions``
    ``auto`` (default): when every measured value is >= 0 (counts, log1p scales), predictions
    are clipped at 0 before they are scored and stored, exactly as ``tabst predict`` writes
    them for a submission; ``true`` / ``false`` force it.
``estimate`` / ``max_hours``
    ``estimate: auto`` (default) calibrates each model on slices of fold 1 and prints what the
    run will cost before fitting when a fold trains on >= 20,000 rows or ``max_hours`` is set
    (``true`` / ``false`` force it); ``max_hours`` refuses a run estimated over it and stops
    one that passes it (:mod:`tabst.cost`).
``cluster``
    ``null`` (default: one process), ``local``, ``local:N`` or a Dask scheduler address
    (``tcp://host:8786``): fit the (fold x model) tasks on Dask workers
    (:mod:`tabst.compare_dask`; ``--cluster`` overrides it).
``unsafe_random_split``
    Allow a cell-level random split (flagged in red in every output).
``primary_metric``
    ``cellwise_spearman`` | ``genewise_pearson`` | ``mse``: sorts the leaderboard.
``seed``
    Seed given to every model (``seed`` parameter) and to random splits.
``refit_all`` / ``save_fold_models``
    Refit every model on all rows into ``models/<model>/all`` (for ``tabst predict`` /
    ``tabst explain``); keep each fold's fitted model in ``models/<model>/fold_<k>``.
``genes``
    Gene selection ``{select: all | list | hvg, file: PATH, k: 2000, flavor: variance | seurat}``
    (see :mod:`tabst.genes`): every gene, the genes of a list file, or the top-k highly variable
    genes computed inside each fold on its training rows only. ``--genes all|FILE|hvg:K``.
``embed``
    What ``tabst embed`` should compute for this preset (encoder, layer, patch_size, weights);
    recorded in the run and used to pick the embedding when several exist.
``report``
    ``n_map_genes``, ``n_best_worst``, ``map_sample``, ``dpi``, ``max_mb``.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable

import yaml

from .errors import TabstError

PRESET_DIRS = (Path(__file__).resolve().parent.parent / "configs", Path.cwd() / "configs")

DEFAULTS: dict = {
    "name": "default",
    "description": "",
    "embedding": None,
    "features": {},
    "models": ["mean", "ridge", "tree", "xgboost", "tabnet"],
    "params": {},
    "folds": "leave-one-sample-out",
    "group_column": "auto",
    "region_column": "auto",
    "expect_transform": None,
    "clip_predictions": "auto",
    "estimate": "auto",
    "max_hours": None,
    "cluster": None,
    "unsafe_random_split": False,
    "primary_metric": "cellwise_spearman",
    "seed": 0,
    "refit_all": True,
    "save_fold_models": True,
    "genes": {"select": "all", "file": None, "k": 2000, "flavor": "variance"},
    "embed": {"encoder": "resnet50", "layer": "layer3", "patch_size": 32, "weights": "imagenet"},
    "report": {"n_map_genes": 3, "n_best_worst": 10, "map_sample": None, "dpi": 100,
               "max_mb": 5.0},
    "tune": {},
}

# expected type of each top-level / nested key (None = any)
_TYPES: dict = {
    "name": str, "description": str, "embedding": (str, list, type(None)), "features": dict,
    "models": list, "params": dict, "folds": str, "group_column": (str, type(None)),
    "region_column": (str, type(None)), "expect_transform": (str, type(None)),
    "clip_predictions": (str, bool), "estimate": (str, bool),
    "max_hours": (int, float, type(None)), "cluster": (str, type(None)),
    "unsafe_random_split": bool, "primary_metric": str,
    "seed": int, "refit_all": bool, "save_fold_models": bool, "genes": (dict, str), "embed": dict,
    "report": dict, "tune": dict,
    "embed.encoder": str, "embed.layer": str, "embed.patch_size": int, "embed.weights": str,
    "report.n_map_genes": int, "report.n_best_worst": int,
    "report.map_sample": (str, type(None)), "report.dpi": int, "report.max_mb": (int, float),
}
_TYPE_WORDS = {str: "a string", int: "an integer", bool: "true/false", list: "a list",
               dict: "a mapping", float: "a number", type(None): "null"}


def preset_names() -> list[str]:
    """Names of the presets shipped in ``configs/``."""
    out = set()
    for d in PRESET_DIRS:
        if d.is_dir():
            out.update(p.stem for p in d.glob("*.yaml"))
    return sorted(out)


def find_config(name_or_path) -> Path:
    """A preset name (``crunch1``) or a path to a YAML file → the file's path."""
    p = Path(str(name_or_path))
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in str(name_or_path):
        if not p.is_file():
            raise TabstError(f"config file {p} not found. Presets: {', '.join(preset_names())}.")
        return p
    for d in PRESET_DIRS:
        q = d / f"{name_or_path}.yaml"
        if q.is_file():
            return q
    raise TabstError(f"unknown config preset {str(name_or_path)!r}. Presets: "
                     f"{', '.join(preset_names()) or '(none found)'}; or give a path to a YAML "
                     "file.")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise TabstError(f"{path}: not valid YAML ({e}).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TabstError(f"{path}: a config must be a YAML mapping of keys (got "
                         f"{type(data).__name__}).")
    return data


def _merge(base: dict, upd: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("features",):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(item: str, registry_names: Iterable[str] = ()) -> tuple[list[str], object]:
    """``"ridge.alphas=[0.1,1]"`` → (["params", "ridge", "alphas"], [0.1, 1]); the value is parsed
    as YAML. A first component that names a model is short for ``params.<model>``."""
    if "=" not in item:
        raise TabstError(f"--set {item!r}: expected KEY=VALUE, e.g. --set ridge.alphas=[0.1,1,10] "
                         "or --set folds=group-kfold:3.")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise TabstError(f"--set {item!r}: empty key.")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError as e:
        raise TabstError(f"--set {key}: the value {raw!r} is not valid YAML ({e}).") from None
    parts = key.split(".")
    if parts[0] in set(registry_names) and parts[0] not in DEFAULTS:
        parts = ["params"] + parts
    return parts, value


def apply_override(cfg: dict, parts: list[str], value) -> None:
    d = cfg
    for i, p in enumerate(parts[:-1]):
        if p not in d or d[p] is None:
            d[p] = {}
        if not isinstance(d[p], dict):
            raise TabstError(f"--set {'.'.join(parts)}: {'.'.join(parts[:i + 1])} is not a "
                             "mapping.")
        d = d[p]
    d[parts[-1]] = value


def _type_ok(value, expected) -> bool:
    exp = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in exp
    if isinstance(value, int) and float in exp:
        return True
    return isinstance(value, exp)


def _type_words(expected) -> str:
    exp = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in exp)


def validate_config(cfg: dict, source: str = "config") -> dict:
    """Check every key and type; fill defaults. Raises :class:`TabstError` naming the key."""
    from .evaluate import METRICS, parse_folds
    from .models import REGISTRY

    if not isinstance(cfg, dict):
        raise TabstError(f"{source}: a config must be a mapping.")
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        more = f" (and {', '.join(map(repr, unknown[1:]))})" if unknown[1:] else ""
        raise TabstError(f"{source}: unknown key {unknown[0]!r}{more}. "
                         f"Valid keys: {', '.join(DEFAULTS)}.")
    out = _merge(DEFAULTS, cfg)
    for key, value in out.items():
        if not _type_ok(value, _TYPES[key]):
            raise TabstError(f"{source}: key {key!r} must be {_type_words(_TYPES[key])}, got "
                             f"{value!r}.")
    out["embedding"] = _check_embedding(out["embedding"], source)
    for sect in ("embed", "report"):
        bad = sorted(set(out[sect]) - set(DEFAULTS[sect]))
        if bad:
            raise TabstError(f"{source}: unknown key '{sect}.{bad[0]}'. Valid: "
                             f"{', '.join(f'{sect}.{k}' for k in DEFAULTS[sect])}.")
        for k, v in out[sect].items():
            t = _TYPES[f"{sect}.{k}"]
            if not _type_ok(v, t):
                raise TabstError(f"{source}: key '{sect}.{k}' must be {_type_words(t)}, got {v!r}.")
    # models
    models = []
    for m in out["models"]:
        if not isinstance(m, str) or m not in REGISTRY:
            raise TabstError(f"{source}: key 'models': unknown model {m!r}. Known models: "
                             f"{', '.join(REGISTRY)}.")
        if m not in models:
            models.append(m)
    if "mean" in REGISTRY and "mean" not in models:
        models.insert(0, "mean")
    out["models"] = models
    # params
    for m, p in out["params"].items():
        if m not in REGISTRY:
            raise TabstError(f"{source}: key 'params.{m}': unknown model {m!r}. Known models: "
                             f"{', '.join(REGISTRY)}.")
        if not isinstance(p, dict):
            raise TabstError(f"{source}: key 'params.{m}' must be a mapping of parameters, got "
                             f"{p!r}.")
        allowed = model_defaults(REGISTRY[m])
        for k in p:
            if k not in allowed:
                raise TabstError(f"{source}: unknown key 'params.{m}.{k}'. Parameters of {m}: "
                                 f"{', '.join(sorted(allowed))}.")
    for key in ("group_column", "expect_transform"):
        if out[key] is not None and not out[key].strip():
            raise TabstError(f"{source}: key {key!r} must be a non-empty string or null, got "
                             f"{out[key]!r}.")
    if isinstance(out["clip_predictions"], str) and out["clip_predictions"] != "auto":
        raise TabstError(f"{source}: key 'clip_predictions' must be auto, true or false, got "
                         f"{out['clip_predictions']!r}.")
    if isinstance(out["estimate"], str) and out["estimate"] != "auto":
        raise TabstError(f"{source}: key 'estimate' must be auto, true or false, got "
                         f"{out['estimate']!r}.")
    from .cost import check_max_hours

    out["max_hours"] = check_max_hours(out["max_hours"], source)
    from .cluster import parse_cluster

    try:
        parse_cluster(out["cluster"])
    except TabstError as e:
        raise TabstError(f"{source}: key 'cluster': {e}") from None
    if out["seed"] < 0:
        raise TabstError(f"{source}: key 'seed' must be an integer >= 0, got {out['seed']!r}.")
    for m in dict.fromkeys(models + list(out["params"])):
        _check_model_params(out, m, source)
    # feature set (validated by the feature builder)
    from .dataset import validate_spec

    try:
        out["features"] = validate_spec(out["features"])
    except TabstError as e:
        msg = str(e).split(": ", 1)[-1]  # "key 'embedding.pca' must be ..." -> features.embedding.pca
        msg = ("key 'features." + msg[5:]) if msg.startswith("key '") else f"key 'features': {msg}"
        raise TabstError(f"{source}: {msg}") from None
    # folds / metric
    try:
        kind, _ = parse_folds(out["folds"])
    except TabstError as e:
        raise TabstError(f"{source}: key 'folds': {str(e).split(': ', 1)[-1]}") from None
    if kind == "random" and not out["unsafe_random_split"]:
        raise TabstError(f"{source}: key 'folds' is {out['folds']!r}, a cell-level random split "
                         "that leaks spatial neighbours; it needs unsafe_random_split: true "
                         "(--unsafe-random-split).")
    if out["primary_metric"] not in METRICS:
        raise TabstError(f"{source}: key 'primary_metric' must be one of {', '.join(METRICS)}, "
                         f"got {out['primary_metric']!r}.")
    r = out["report"]
    if r["n_map_genes"] < 0 or r["n_best_worst"] < 0 or r["dpi"] < 30 or r["max_mb"] <= 0:
        raise TabstError(f"{source}: key 'report': n_map_genes, n_best_worst >= 0, dpi >= 30 and "
                         "max_mb > 0 required.")
    from .genes import validate_genes

    out["genes"] = validate_genes(out["genes"], source)
    if out["embed"]["patch_size"] < 1:
        raise TabstError(f"{source}: key 'embed.patch_size' must be >= 1.")
    from .tuning.space import validate_tune

    out["tune"] = validate_tune(out["tune"], out["models"], source)
    return out


def _check_embedding(value, source: str):
    """``embedding``: None, a name, or a list of distinct non-empty names (one name: that name)."""
    if not isinstance(value, list):
        return value
    if not value:
        raise TabstError(f"{source}: key 'embedding' is an empty list; give one or more "
                         "embedding names, or null.")
    for v in value:
        if not isinstance(v, str) or not v.strip():
            raise TabstError(f"{source}: key 'embedding' must list non-empty embedding names, "
                             f"got {v!r} in {value!r}.")
    dup = sorted({v for v in value if value.count(v) > 1})
    if dup:
        raise TabstError(f"{source}: key 'embedding' names {dup[0]!r} twice.")
    return value[0] if len(value) == 1 else list(value)


def model_defaults(cls) -> dict:
    """Every parameter a registry class accepts, with its default."""
    from .models.base import COMMON_DEFAULTS

    return {**COMMON_DEFAULTS, **getattr(cls, "DEFAULTS", {})}


def _check_model_params(cfg: dict, name: str, source: str) -> None:
    """Build model ``name`` from the config (its rules check every parameter, see
    :mod:`tabst.models.params`): a bad value stops the run before anything is fitted, with a
    message naming the key."""
    from .models import REGISTRY
    from .models.params import ParamError

    try:
        REGISTRY[name](**model_params(cfg, name))
    except ParamError as e:
        raise TabstError(f"{source}: key 'params.{e.model}.{e.param}' (--set {e.model}.{e.param}) "
                         f"must be {e.allowed}, got {e.value!r}.") from None
    except TabstError as e:
        raise TabstError(f"{source}: key 'params.{name}': {e}") from None


def load_config(name_or_path=None, overrides: Iterable[str] = (), **cli) -> dict:
    """Load a preset (by name or path; default ``default``), apply ``--set`` overrides and the
    command-line options in ``cli`` (``models``, ``folds``, ``embedding``, ``unsafe_random_split``,
    ``cluster``, ``genes`` (``--genes`` text, see :func:`tabst.genes.parse_genes_option`);
    ``None`` = not given), validate, return the resolved dict.

    Raises
    ------
    TabstError
        naming the offending key (unknown key, wrong type, unknown model).
    """
    from .models import REGISTRY

    if isinstance(name_or_path, dict):
        cfg, source = copy.deepcopy(name_or_path), "config"
    else:
        path = find_config(name_or_path or "default")
        cfg, source = _read_yaml(path), str(path)
    if isinstance(cfg, dict) and "name" not in cfg and not isinstance(name_or_path, dict):
        cfg["name"] = Path(source).stem
    for item in overrides or ():
        parts, value = parse_override(item, REGISTRY)
        apply_override(cfg, parts, value)
    if cli.get("models") is not None:
        models = cli["models"]
        cfg["models"] = [m.strip() for m in models.split(",") if m.strip()] \
            if isinstance(models, str) else list(models)
    for key in ("folds", "embedding", "cluster"):
        if cli.get(key) is not None:
            cfg[key] = cli[key]
    if isinstance(cli.get("embedding"), str) and "," in cli["embedding"]:  # --features a,b
        cfg["embedding"] = [e.strip() for e in cli["embedding"].split(",")]
    if cli.get("genes") is not None:  # --genes all|FILE|hvg[:K]: replaces the whole section
        from .genes import parse_genes_option

        g = parse_genes_option(cli["genes"]) if isinstance(cli["genes"], str) else cli["genes"]
        if g.get("select") == "hvg" and isinstance(cfg.get("genes"), dict):
            g = {**{k: v for k, v in cfg["genes"].items() if k in ("k", "flavor")}, **g}
        cfg["genes"] = g
    if cli.get("unsafe_random_split"):
        cfg["unsafe_random_split"] = True
        if not str(cfg.get("folds", "")).startswith("random:"):
            cfg["folds"] = "random:5"
    extra = sorted(set(cli) - {"models", "folds", "embedding", "unsafe_random_split", "genes",
                               "cluster"})
    if extra:
        raise TypeError(f"load_config: unexpected options {extra}")
    return validate_config(cfg, source if not overrides else f"{source} (with --set)")


def model_params(cfg: dict, name: str) -> dict:
    """Parameters for model ``name``: the config's ``params.<name>`` plus the run seed (unless
    the model's own seed is set)."""
    p = dict(cfg.get("params", {}).get(name) or {})
    p.setdefault("seed", int(cfg.get("seed", 0)))
    return p


def dump_config(cfg: dict) -> str:
    """The resolved config as YAML text (keys in schema order)."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
