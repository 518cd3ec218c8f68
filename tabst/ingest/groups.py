"""Per-section patient/group labels of spot ingest (``--group SAMPLE=GROUP``, a manifest's
``group`` column) -> ``/cells/group``.

Serial sections of one tumour (or one animal) are not independent: leave-one-section-out then
trains and tests on the same patient. A group names what must stay together; ``tabst compare``
folds by ``/cells/group`` when the store has it (``group_column: auto``), so no group is ever in
both the training and the test rows of a fold.

The labels are checked before any input is read: every ``SAMPLE`` must be a section of this
ingest (else an error names it and lists the sections), a sample may not get two different
groups, and either every section gets a group or none does (a partial grouping would fold the
ungrouped sections by a made-up value).
"""
from __future__ import annotations

from typing import Sequence

from ..errors import InputError

GROUP_DESCRIPTION = ("patient / group of the spot's section, given at ingest (--group "
                     "SAMPLE=GROUP or the manifest's group column); tabst compare keeps each "
                     "group wholly in training or in test rows")
GROUP_FIX = ("give --group SAMPLE=GROUP once per section, e.g. --group MOB1=mouse1 --group "
             "MOB2=mouse1 (a section that is its own patient: --group MOB3=MOB3)")


def add_group(groups: dict, sample: str, group: str, where: str) -> None:
    """Record ``sample -> group`` in ``groups``; a second, different group for the same sample
    is an :class:`InputError` naming both and ``where`` the second one came from."""
    group = str(group).strip()
    if not group:
        raise InputError(f"{where}: empty group for sample '{sample}'", fix=GROUP_FIX)
    old = groups.get(sample)
    if old is not None and old != group:
        raise InputError(f"{where}: sample '{sample}' is given two groups, '{old}' and "
                         f"'{group}'", fix="give each section one group")
    groups[sample] = group


def parse_group_options(specs: Sequence[str] | None, groups: dict | None = None) -> dict:
    """``["MOB1=mouse1", ...]`` (``--group``, repeatable) -> ``{"MOB1": "mouse1", ...}``, added
    to ``groups`` (e.g. the groups of a manifest) when given."""
    out = dict(groups or {})
    for spec in specs or []:
        sample, sep, group = str(spec).partition("=")
        if not sep or not sample.strip() or not group.strip():
            raise InputError(f"--group '{spec}': expected SAMPLE=GROUP", fix=GROUP_FIX)
        add_group(out, sample.strip(), group, f"--group '{spec}'")
    return out


def assign_groups(samples: Sequence[str], groups: dict | None) -> list[str | None]:
    """The group of each section in ``samples`` order (all None when ``groups`` is empty).

    Raises
    ------
    InputError
        A group names a sample that is not among ``samples`` (the message lists them), or some
        sections have a group and others do not.
    """
    if not groups:
        return [None] * len(samples)
    known = list(samples)
    unknown = [s for s in groups if s not in known]
    if unknown:
        raise InputError(f"--group names sample(s) {', '.join(repr(s) for s in unknown)}, which "
                         f"are not sections of this ingest (sections: {', '.join(known)})",
                         fix="use the section names listed here (set by --sample, the NAME "
                             "of --section, the manifest's sample column; HEST: the id)")
    missing = [s for s in known if s not in groups]
    if missing:
        raise InputError(f"sections without a group: {', '.join(missing)} (groups given for "
                         f"{', '.join(s for s in known if s in groups)})", fix=GROUP_FIX)
    return [groups[s] for s in known]


def describe_groups(groups: dict | None) -> str:
    """The ingest summary's groups line: each group and its sections, or a warning."""
    if not groups:
        return ("none given (compare folds by section; serial sections of one patient would "
                "be in training and test: give --group SAMPLE=GROUP)")
    by = {}
    for s, g in groups.items():
        by.setdefault(g, []).append(s)
    line = "; ".join(f"{g} = {', '.join(ss)}" for g, ss in by.items())
    if len(by) == 1:
        line += " (one group only: compare cannot fold by group)"
    return f"{len(by)} ({line}) -> /cells/group"
