"""``list_images`` and ``load_image`` on folders that would otherwise hang a build or leave images out unsaid."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from cir_lightning.data.folder import list_images
from cir_lightning.data.images import load_image
from cir_lightning.errors import CIRDataError


def _folder(tmp_path):
    for name in ("a.png", "sub/b.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    return tmp_path


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are a POSIX file type")
def test_a_named_pipe_with_an_image_name_is_refused_not_read(tmp_path):
    root = _folder(tmp_path)
    os.mkfifo(root / "sub" / "pipe.png")  # opening it for reading would wait for a writer forever
    with pytest.raises(CIRDataError, match=r"pipe\.png: is not a regular file \(a pipe, socket or device\)"):
        list_images(root)
    with pytest.raises(CIRDataError, match=r"image `.*pipe\.png` is not a regular file"):
        load_image(root / "sub" / "pipe.png")


def test_a_folder_that_cannot_be_listed_is_an_error_not_a_silent_gap(tmp_path, monkeypatch):
    root = _folder(tmp_path)
    real = os.scandir
    locked = str(root / "sub")

    def scandir(path="."):  # what a folder without read permission does (root ignores the mode bits)
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(CIRDataError, match=r"sub: cannot be listed \(permission denied\), so its images cannot be "
                                           r"found"):
        list_images(root)
    monkeypatch.setattr(os, "scandir", real)
    assert list_images(root) == ["a.png", "sub/b.png"]


def test_an_empty_file_with_an_image_name_is_said_to_be_empty(tmp_path):
    """A zero-byte photo (a failed copy or download) was "not a recognised image format, or truncated or corrupt"."""
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(CIRDataError, match=r"image `.*zero\.jpg` is an empty file \(0 bytes\), not an image$"):
        load_image(tmp_path / "zero.jpg")
