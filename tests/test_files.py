"""jaxalloc.files: the one check of an output path, before any work, and the one way a file is
replaced whole."""

import errno
import os
import stat

import pytest

from jaxalloc.files import replacing, why_unwritable


def test_a_path_that_can_be_written_is_left_as_it_was(tmp_path):
    new = tmp_path / "new.csv"
    assert why_unwritable(new) is None
    assert list(tmp_path.iterdir()) == []  # the probe is gone, no file was created
    old = tmp_path / "old.csv"
    old.write_text("kept\n")
    stamp = os.stat(old).st_mtime_ns
    assert why_unwritable(old) is None
    assert old.read_text() == "kept\n" and sorted(tmp_path.iterdir()) == [old]
    assert os.stat(old).st_mtime_ns == stamp


def test_the_reasons(tmp_path, monkeypatch):
    assert why_unwritable(tmp_path) == "it is a directory"
    assert why_unwritable(tmp_path / "missing" / "x.csv") == f"no such directory {tmp_path / 'missing'}"
    assert why_unwritable("/proc/jaxalloc-x.csv") == os.strerror(errno.ENOENT)  # no files can be made there

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr("jaxalloc.files.tempfile.mkstemp", refuse)  # a read-only folder (root ignores chmod)
    assert why_unwritable(tmp_path / "x.csv") == os.strerror(errno.EACCES)


def test_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert why_unwritable("x.parquet") is None
    assert why_unwritable("no/x.parquet") == f"no such directory {tmp_path / 'no'}"


def _usual_mode(folder) -> int:
    """The permissions a new file gets in `folder` (those of the umask)."""
    probe = folder / "usual"
    probe.write_text("")
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    return mode


def test_replacing_writes_all_of_a_file_or_nothing(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]  # the temporary file is gone
    with replacing(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_text("new")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]
    assert stat.S_IMODE(target.stat().st_mode) == _usual_mode(tmp_path)


def test_measurement_files_have_the_usual_permissions(tmp_path):
    """A Parquet measurement file, rewritten on every append, and the settings file beside
    it have the permissions of any new file (they came out owner-only, 0600, before)."""
    pytest.importorskip("pyarrow")
    from jaxalloc.calibrate.data import append_rows
    from jaxalloc.calibrate.settings import settings_path, write_settings

    out = tmp_path / "m.parquet"
    row = {"task": "GSM8K", "budget": 256, "repeat": 0, "correct": True, "service_s": 3.91, "item": "g-1"}
    append_rows(out, [row])
    append_rows(out, [{**row, "item": "g-2"}])
    write_settings(out, {"seed": 0})
    usual = _usual_mode(tmp_path)
    assert [stat.S_IMODE(p.stat().st_mode) for p in (out, settings_path(out))] == [usual, usual]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.parquet", "m.parquet.settings.json"]
