"""A hostile corpus never hangs or stops a run: fifos and devices are refused before they are
opened, every line is read within the cap, and whatever is wrong with one record is its error.

A regression here would hang rather than fail, so each test that could runs under a deadline
that ends the session with every thread's traceback (faulthandler), and subprocesses get
`timeout=`."""

import faulthandler
import os
from contextlib import contextmanager

import pytest
from PIL import Image

from e5v_search import files
from e5v_search.errors import InputError, NotRegularFileError
from e5v_search.model.images import image_size, load_image

FIFO = "is a fifo, not a regular file"
ZERO = "is a link to a character device, not a regular file"
BAD_NAME = b"caf\xe9.png"  # Latin-1, not UTF-8: Python holds the name with a surrogate


@contextmanager
def deadline(seconds=120):
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _hostile_folder(folder):
    """Two good images, a link to /dev/zero named x.png, a fifo named y.jpg, a name not UTF-8."""
    folder.mkdir(parents=True)
    for i, color in enumerate([(200, 30, 30), (30, 30, 200)]):
        Image.new("RGB", (40, 30), color).save(folder / f"good{i}.png")
    os.symlink("/dev/zero", folder / "x.png")
    os.mkfifo(folder / "y.jpg")
    Image.new("RGB", (30, 40), (30, 200, 30)).save(os.path.join(os.fsencode(folder), BAD_NAME))
    return folder


# -- opening: only regular files --------------------------------------------------------------


def test_a_fifo_or_device_is_refused_before_it_is_opened(tmp_path):
    folder = _hostile_folder(tmp_path / "in")
    with deadline():
        for path, reason in [(folder / "y.jpg", FIFO), (folder / "x.png", ZERO)]:
            with pytest.raises(NotRegularFileError) as refused:
                files.open_regular(path)
            assert str(refused.value) == f"{path}: {reason}"
            with pytest.raises(NotRegularFileError):
                files.sha256_of(path)
            with pytest.raises(InputError, match=reason):
                load_image(path)
            with pytest.raises(InputError, match=reason):
                image_size(str(path))
        with pytest.raises(IsADirectoryError):
            files.open_regular(folder)
        with pytest.raises(InputError, match="is a directory, not an image"):
            load_image(folder)
        with files.open_regular(folder / "good0.png") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert load_image(folder / "good0.png").size == (40, 30)


def test_a_file_swapped_for_a_fifo_after_the_check_is_refused_when_opened(tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "late.png")
    check = files.check_regular
    calls = []

    def passes_first(path, status):  # the stat before the open saw a regular file
        calls.append(path)
        if len(calls) > 1:
            check(path, status)

    monkeypatch.setattr(files, "check_regular", passes_first)
    with deadline(), pytest.raises(NotRegularFileError, match=FIFO):
        files.open_regular(tmp_path / "late.png")  # O_NONBLOCK: no wait for a writer
    assert len(calls) == 2
