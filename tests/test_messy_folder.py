"""``cir-lightning index`` / ``search`` over a messy real-world photo folder: every file is indexed, refused in one
line, or passed over by a rule that the output counts; nothing is skipped without a word."""

from __future__ import annotations

import os
import re
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cir_lightning.cli import main
from cir_lightning.data.folder import scan_images
from cir_lightning.data.images import load_image
from cir_lightning.errors import CIRDataError
from cir_lightning.image_index import ImageIndex
from tests.test_cli import CONF

NFC, NFD = unicodedata.normalize("NFC", "café.png"), unicodedata.normalize("NFD", "café.png")


def _messy(root: Path, outside: Path) -> Path:
    for folder in (root / "a" / "b" / "c", root / "Holiday 2024", root / ".thumbnails", outside):
        folder.mkdir(parents=True, exist_ok=True)

    def save(name: str, colour: str, size: tuple[int, int] = (24, 16), **kwargs) -> None:
        Image.new("RGB", size, colour).save(root / name, **kwargs)

    save("UPPER.JPG", "red")
    save("mixed.Png", "green")
    save("a/b/c/deep.webp", "blue")
    save("anim.gif", "red", save_all=True, append_images=[Image.new("RGB", (24, 16), "blue")], duration=100)
    Image.fromarray((np.arange(24 * 16).reshape(16, 24) * 150).astype(np.uint16)).save(root / "sixteen.png")
    Image.new("CMYK", (24, 16), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    Image.new("RGBA", (24, 16), (255, 0, 0, 0)).save(root / "rgba.png")
    palette = Image.new("P", (24, 16))
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.save(root / "palette.png", transparency=0)
    save("one.png", "white", (1, 1))
    save("wide.png", "purple", (20000, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    sideways = Image.new("RGB", (80, 40), "red")
    sideways.paste(Image.new("RGB", (40, 40), "blue"), (40, 0))
    sideways.save(root / "phone.jpg", exif=exif.tobytes(), quality=95)
    good = (root / "UPPER.JPG").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not a photo")
    (root / "notes.txt").write_text("a list of places")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    save(".thumbnails/thumb.png", "orange")
    save("Holiday 2024/beach day.png", "yellow")
    save(NFC, "brown")
    save(NFD, "navy")  # the same name to a reader, another file to Linux
    save("new\nline.png", "teal")
    save("dup1.png", "olive")
    shutil.copy(root / "dup1.png", root / "dup2.png")
    Image.new("RGB", (24, 16), "pink").save(outside / "elsewhere.png")
    (root / "link_inside.png").symlink_to(root / "mixed.Png")
    (root / "link_outside.png").symlink_to(outside / "elsewhere.png")
    (root / "a" / "b" / "loop").symlink_to(root / "a")
    (root / "broken_link.png").symlink_to(root / "nowhere.png")
    return root


INDEXED = sorted(["Holiday 2024/beach day.png", "UPPER.JPG", "a/b/c/deep.webp", "anim.gif", NFC, NFD, "cmyk.jpg",
                  "dup1.png", "dup2.png", "link_outside.png", "mixed.Png", "new\nline.png", "one.png", "palette.png",
                  "phone.jpg", "rgba.png", "sixteen.png", "wide.png"])
UNREADABLE = {"broken_link.png": "is a broken symbolic link", "text.jpg": "not a recognised image format",
              "truncated.jpg": "is truncated or corrupt", "zero.jpg": "is an empty file (0 bytes), not an image"}


def test_a_messy_folder_is_indexed_refused_or_counted_and_search_sees_what_changed_since(tmp_path, tiny_model_dir,
                                                                                          capsys):
    """Hidden files, other types and links reached twice were passed over without a word; an empty file was
    "not a recognised image format"; a photo replaced under the same name was ranked by its old picture
    without a word; ``search --show`` drew phone photos sideways while they were embedded upright."""
    photos = _messy(tmp_path / "photos", tmp_path / "outside")
    scan = scan_images(photos)
    assert scan.relpaths == sorted([*INDEXED, *UNREADABLE])
    assert scan.counts() == {"hidden": 2, "other_types": {".txt": 1}, "reached_again": 2, "through_outside_links": 1}
    args = ["index", str(photos), "--config", str(CONF), "--model.backbone.init_args.model_name_or_path",
            str(tiny_model_dir), "--out", str(tmp_path / "index")]
    with pytest.raises(SystemExit):
        main(args)
    err = capsys.readouterr().err
    assert "4 of 22 images cannot be read" in err
    assert all(reason in err for reason in UNREADABLE.values())
    main([*args, "--skip-unreadable"])
    out = capsys.readouterr().out
    assert "18 of 22 images below" in out
    assert ("not indexed: 2 hidden files or folders (names starting with `.`), 1 file of other types (.txt 1), "
            "2 folders or files reached again through a link (each image once); 1 image indexed through links to "
            "files outside the folder\n") in out
    index = ImageIndex.open(tmp_path / "index")
    assert index.relpaths == INDEXED
    assert index.info["left_out"] == scan.counts()
    skipped = dict(index.info["skipped"])
    assert sorted(skipped) == sorted(UNREADABLE)
    assert all(words in skipped[name] for name, words in UNREADABLE.items())
    backbone = index.load_backbone()
    rows = np.load(tmp_path / "index" / "embeddings.npy")
    for name in ("wide.png", "one.png", "sixteen.png", NFD):  # as load_image decodes them (upright)
        image = load_image(photos / name, upright=True)
        assert np.allclose(rows[index.relpaths.index(name)], backbone.encode_gallery([image])[0].numpy(), atol=1e-5)

    Image.new("RGB", (30, 20), "black").save(photos / "dup2.png")  # another photo under an indexed name
    (photos / "Holiday 2024" / "beach day.png").unlink()
    capsys.readouterr()
    main(["search", str(tmp_path / "index"), "--image", str(photos / "phone.jpg"), "--text", "x", "-k", "17"])
    captured = capsys.readouterr()
    rows = [re.fullmatch(r" *\d+ +-?\d\.\d{4}  (.*?)(  \(.*\))?", line) for line in captured.out.splitlines()[2:]]
    assert len(rows) == 17
    marks = {row[1].rsplit("/", 1)[-1]: row[2].strip() for row in rows if row[2]}
    assert marks == {"beach day.png": "(gone)", "dup2.png": "(changed since indexed)"}
    assert "1 of these images changed since the index was built (ranked as they were then)" in captured.err
    assert index.changed(["dup1.png", "dup2.png", "Holiday 2024/beach day.png"]) == ["dup2.png",
                                                                                   "Holiday 2024/beach day.png"]
    main(["search", str(tmp_path / "index"), "--image", str(photos / "phone.jpg"), "--text", "x", "-k", "1",
          "--show", str(tmp_path / "shown.png")])
    from cir_lightning.pictures import tile_origin

    with Image.open(tmp_path / "shown.png") as picture:
        x, y = tile_origin(0, 0)
        column = [picture.getpixel((x + 5, y + row)) for row in range(0, 100, 10)]
    assert set(column) == {(60, 60, 60)}  # upright (40x80): the tile's left edge is background, not the photo


def test_a_folder_without_images_says_what_it_holds(tmp_path):
    (tmp_path / ".cache").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / ".cache" / "a.png")
    for name in ("IMG_0001.HEIC", "IMG_0002.HEIC", "README"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(CIRDataError, match=r"holds no image files \(looked for .* in every sub-folder; it holds 1 "
                                           r"hidden file or folder \(names starting with `\.`\), 3 files of other "
                                           r"types \(\.heic 2, no suffix 1\)\)"):
        scan_images(tmp_path)


def test_an_index_without_stamps_knows_only_gone_images(tmp_path):
    """An index written before stamps.npy marks gone files only; a damaged stamps file is one line; below a
    ``--root`` a file's time may differ."""
    from cir_lightning.index_files import read_stamps

    assert read_stamps(tmp_path / "stamps.npy", 3) is None
    np.save(tmp_path / "stamps.npy", np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(CIRDataError, match=r"stamps\.npy: holds int64 \(2, 2\), not int64 \(3, 2\): the index is "
                                           r"damaged"):
        read_stamps(tmp_path / "stamps.npy", 3)
    os.remove(tmp_path / "stamps.npy")
    index = ImageIndex(tmp_path, {"image_index": {"root": str(tmp_path)}}, ["a.png", "b.png"], None)
    (tmp_path / "a.png").write_bytes(b"1")
    assert index.changed(["a.png", "b.png"]) == ["b.png"]
    # below a `--root` (a moved or copied folder: its files may have new times) only another size counts
    for size, changed in ((1, []), (2, ["a.png"])):
        moved = ImageIndex(tmp_path, {"image_index": {"root": "/photos/before"}}, ["a.png"], None, root=tmp_path,
                           stamps=np.array([[size, 0]], dtype=np.int64))
        assert moved.changed(["a.png"]) == changed


@pytest.mark.skipif(os.name == "nt", reason="Windows file names are always unicode")
def test_a_file_name_that_is_not_utf8_is_refused_before_any_image_is_embedded(tmp_path):
    """A Latin-1 name (an old camera's, a zip's) was embedded, then the shard's ids.json failed with a
    UnicodeEncodeError traceback."""
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    Image.new("RGB", (4, 4)).save(os.fsencode(tmp_path) + b"/caf\xe9.png")
    with pytest.raises(CIRDataError, match=r"1 image file names are not valid UTF-8 \('caf\\xe9\.png'\), which an "
                                           r"index cannot record; rename them"):
        scan_images(tmp_path)
