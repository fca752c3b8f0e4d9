"""jaxalloc.files.why_unwritable: the one check of an output path, before any work."""

import errno
import os

from jaxalloc.files import why_unwritable


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
