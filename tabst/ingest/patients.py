"""Per-section patient labels of spot ingest (``--patient SAMPLE=PATIENT``, a manifest's
``patient`` column) -> ``/cells/patient``.

Serial sections of one tumour (or one animal) are not independent: leave-one-section-out then
trains and tests on the same patient. ``tabst compare`` folds by ``/cells/patient`` when the
store has it (``group_column: auto``), so no patient is ever in both the training and the test
rows of a fold. ``/cells/group`` is another column: the train/validation/test split of Crunch
and table stores, which ``tabst predict --group`` filters on; spot ingest never writes it.

``--group`` and a manifest's ``group`` column are the old names of ``--patient`` / ``patient``
on the spot commands; they still work, write ``/cells/patient`` and say so (:data:`ALIAS_NOTE`).

The labels are checked before any input is read: every ``SAMPLE`` must be a section of this
ingest (else an error names it and lists the sections), a sample may not get two different
patients, and either every section gets a patient or none does (a partial labelling would fold
the unlabelled sections by a made-up value).
"""
from __future__ import annotations

from typing import Sequence

from ..errors import InputError

PATIENT_DESCRIPTION = ("patient / tumour of the spot's section, given at ingest (--patient "
                       "SAMPLE=PATIENT or the manifest's patient column); tabst compare folds "
                       "by it (group_column: auto), so serial sections of one patient are never "
                       "in both training and test rows")
PATIENT_FIX = ("give --patient SAMPLE=PATIENT once per section, e.g. --patient MOB1=mouse1 "
               "--patient MOB2=mouse1 (a section that is its own patient: --patient MOB3=MOB3)")
ALIAS_NOTE = ("note: {what} is the old name of {new}; it now writes /cells/patient "
              "(/cells/group stays the train/validation/test split)")


def alias_note(what: str, new: str = "--patient") -> str:
    """The one-line note printed when the deprecated ``--group`` / manifest ``group`` is used."""
    return ALIAS_NOTE.format(what=what, new=new)


def add_patient(patients: dict, sample: str, patient: str, where: str) -> None:
    """Record ``sample -> patient`` in ``patients``; a second, different patient for the same
    sample is an :class:`InputError` naming both and ``where`` the second one came from."""
    patient = str(patient).strip()
    if not patient:
        raise InputError(f"{where}: empty patient for sample '{sample}'", fix=PATIENT_FIX)
    old = patients.get(sample)
    if old is not None and old != patient:
        raise InputError(f"{where}: sample '{sample}' is given two patients, '{old}' and "
                         f"'{patient}'", fix="give each section one patient")
    patients[sample] = patient


def parse_patient_options(specs: Sequence[str] | None, patients: dict | None = None,
                          option: str = "--patient") -> dict:
    """``["MOB1=mouse1", ...]`` (``--patient``, repeatable; ``option`` names the flag in
    messages) -> ``{"MOB1": "mouse1", ...}``, added to ``patients`` (e.g. a manifest's) when
    given."""
    out = dict(patients or {})
    for spec in specs or []:
        sample, sep, patient = str(spec).partition("=")
        if not sep or not sample.strip() or not patient.strip():
            raise InputError(f"{option} '{spec}': expected SAMPLE=PATIENT", fix=PATIENT_FIX)
        add_patient(out, sample.strip(), patient, f"{option} '{spec}'")
    return out


def assign_patients(samples: Sequence[str], patients: dict | None) -> list[str | None]:
    """The patient of each section in ``samples`` order (all None when ``patients`` is empty).

    Raises
    ------
    InputError
        A patient names a sample that is not among ``samples`` (the message lists them), or
        some sections have a patient and others do not.
    """
    if not patients:
        return [None] * len(samples)
    known = list(samples)
    unknown = [s for s in patients if s not in known]
    if unknown:
        raise InputError(f"--patient names sample(s) {', '.join(repr(s) for s in unknown)}, "
                         f"which are not sections of this ingest (sections: {', '.join(known)})",
                         fix="use the section names listed here (set by --sample, the NAME "
                             "of --section, the manifest's sample column; HEST: the id)")
    missing = [s for s in known if s not in patients]
    if missing:
        raise InputError(f"sections without a patient: {', '.join(missing)} (patients given "
                         f"for {', '.join(s for s in known if s in patients)})", fix=PATIENT_FIX)
    return [patients[s] for s in known]


def describe_patients(patients: dict | None) -> str:
    """The ingest summary's patients line: each patient and its sections, or a warning."""
    if not patients:
        return ("none given (compare folds by section; serial sections of one patient would "
                "be in training and test: give --patient SAMPLE=PATIENT)")
    by = {}
    for s, p in patients.items():
        by.setdefault(p, []).append(s)
    line = "; ".join(f"{p} = {', '.join(ss)}" for p, ss in by.items())
    if len(by) == 1:
        line += " (one patient only: compare cannot fold by patient)"
    return f"{len(by)} ({line}) -> /cells/patient"
