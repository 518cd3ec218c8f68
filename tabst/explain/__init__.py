"""``tabst explain``: per-gene feature attribution a biologist can read.

Public API::

    from tabst.explain import run_explain, top_readable_feature
    html = run_explain("runs/demo", top_genes=5, cells=600)        # writes attributions.h5 too
    top_readable_feature("runs/demo", "GENE3")                     # e.g. "nucleus_area"

Modules: :mod:`.run` (which model explains which cell, entry points), :mod:`.runfolder` (the
run folder, gene choice, the check that a store is the run's),
:mod:`.attribution` (model explain + additivity check + ``attributions.h5``), :mod:`.grouping`
(group sums, readable rankings), :mod:`.report` / :mod:`.plots` / :mod:`.gallery` (the offline
HTML report).
"""
from __future__ import annotations

from .attribution import ModelAttributions, read_attributions, write_attributions
from .grouping import group_sums, readable_importance
from .run import explain_run, readable_ranking, run_explain, top_readable_feature

__all__ = ["run_explain", "explain_run", "top_readable_feature", "readable_ranking",
           "ModelAttributions", "read_attributions", "write_attributions", "group_sums",
           "readable_importance"]
