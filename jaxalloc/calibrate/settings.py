"""The settings a measurement file was measured with, so that a resumed run cannot mix them.

A measuring run (:func:`~jaxalloc.calibrate.measure.measure`) resumes by the key
(task, budget, repeat, item) alone, so the rows of one file must all come from the
same model and sampling settings. The run therefore records a **fingerprint**, a
flat JSON object of the settings that change the rows:

- `backend` (``flax``, ``openai``), `served_model` (the server's model name, with
  ``openai``), and what the caller adds: the command line adds `model` (the
  checkpoint folder's real path) and, with ``flax``, `dtype`;
- `seed` (item choice, GPQA option order, sampling), `temperature`, `answer_tokens`.

Not in it: what does not change a row (the progress bar, the transcript file, the
server's URL) and the lists a rerun may extend: budgets, tasks, repeats and
``--samples`` (the items are a prefix of one seeded order, so more samples add items).
The benchmark files themselves are not fingerprinted: a task name must keep
meaning the same file.

The fingerprint is kept in a sidecar file ``OUT.settings.json`` next to the
measurement file and, for Parquet, also in the file's schema metadata (key
:data:`METADATA_KEY`), which travels with the file and is preferred when present.

:func:`check_settings` refuses to append to a file measured with other settings
(:class:`ResumeError`, naming each setting as old → new). A file with rows but no
fingerprint (written before fingerprints existed) is refused too: its settings are
unknown, and adopting it could mix runs silently. :func:`discard` is ``--force-new``:
it deletes the file and its sidecar so that the run starts afresh. A sidecar whose
measurement file is missing or empty describes no rows and is simply replaced.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..files import replacing
from .data import _PARQUET_SUFFIXES, CalibrationError, parquet_metadata, resume_keys

FORMAT = 1
METADATA_KEY = "jaxalloc.measure.settings"


class ResumeError(CalibrationError):
    """A measurement file that a run may not append to: measured with other settings, or
    with unknown ones. The command line prints it as one ``error:`` line (exit status 2)."""


def settings_path(out: str | Path) -> Path:
    """The sidecar of measurement file `out`: ``OUT.settings.json``."""
    return Path(f"{out}.settings.json")


def settings_document(settings: Mapping[str, Any]) -> str:
    """The JSON text stored in the sidecar and the Parquet metadata."""
    return json.dumps({"format": FORMAT, "settings": dict(sorted(settings.items()))}, indent=1)


def _parse(text: str, where: str) -> dict:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise CalibrationError(f"{where}: not a settings file ({err.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("settings"), dict):
        raise CalibrationError(f"{where}: not a settings file (no 'settings' object)")
    if doc.get("format") != FORMAT:
        raise CalibrationError(f"{where}: settings format {doc.get('format')!r}, this jaxalloc reads {FORMAT}")
    return doc["settings"]


def stored_settings(out: str | Path) -> tuple[dict, str] | None:
    """The fingerprint `out` was measured with and where it was read; None if it has none.

    A Parquet file's own metadata comes first, then the sidecar ``OUT.settings.json``.
    """
    out = Path(out)
    if out.suffix.lower() in _PARQUET_SUFFIXES:
        text = parquet_metadata(out).get(METADATA_KEY)
        if text is not None:
            return _parse(text, f"{out} (Parquet metadata)"), str(out)
    sidecar = settings_path(out)
    if sidecar.is_file():
        try:
            text = sidecar.read_text(encoding="utf-8")
        except OSError as err:
            raise CalibrationError(f"{sidecar}: cannot read: {err.strerror or err}") from None
        return _parse(text, str(sidecar)), str(sidecar)
    return None


def write_settings(out: str | Path, settings: Mapping[str, Any]) -> None:
    """Write the sidecar of `out` whole (:func:`jaxalloc.files.replacing`)."""
    with replacing(settings_path(out)) as tmp:
        tmp.write_text(settings_document(settings) + "\n", encoding="utf-8")


def _show(settings: Mapping[str, Any], key: str) -> str:
    return json.dumps(settings[key]) if key in settings else "(not set)"


def differences(old: Mapping[str, Any], new: Mapping[str, Any], *, partial: bool = False) -> list[str]:
    """``"key: old → new"`` for each setting that differs (sorted by key); with `partial`,
    only the keys of `new` are compared (settings not known yet are left out)."""
    keys = sorted(new if partial else set(old) | set(new))
    return [f"{k}: {_show(old, k)} → {_show(new, k)}" for k in keys
            if (k in old) != (k in new) or (k in old and old[k] != new[k])]


def check_settings(out: str | Path, settings: Mapping[str, Any], *, partial: bool = False) -> None:
    """Raise :class:`ResumeError` unless a run with `settings` may append to `out`.

    It may when `out` holds no rows yet, or when the fingerprint it was measured with
    equals `settings` (with `partial`: agrees on the keys of `settings`; the command
    line checks this before loading the model, when the served model name is not
    known yet). A file with rows and no fingerprint is refused (see the module notes).
    """
    count = len(resume_keys(out))
    if count == 0:
        return
    rows = f"{count} answer{'s' if count > 1 else ''}"
    stored = stored_settings(out)
    how = (f"run the same settings to resume, choose another --out, or add --force-new "
           f"to discard its {rows} and start afresh")
    if stored is None:
        raise ResumeError(f"{out}: {rows} but no record of their settings ({settings_path(out).name} "
                          f"is missing; the file was written by an older jaxalloc or copied without it), so they "
                          f"are not resumed: choose another --out, or add --force-new to discard them and start afresh")
    old, where = stored
    changed = differences(old, settings, partial=partial)
    if changed:
        raise ResumeError(f"{out} was measured with other settings ({where}): {'; '.join(changed)}; {how}")


def discard(out: str | Path) -> str | None:
    """``--force-new``: delete `out` and its sidecar; a note for stderr, or None if neither existed."""
    out = Path(out)
    try:
        count = len(resume_keys(out))
        rows = f"{count} answer{'s' if count != 1 else ''}"
    except CalibrationError:  # unreadable: discarded all the same
        rows = "unreadable"
    removed = [p for p in (out, settings_path(out)) if p.is_file()]
    for p in removed:
        p.unlink()
    if not removed:
        return None
    return f"--force-new: discarded {' and '.join(str(p) for p in removed)} ({rows}); starting afresh"
