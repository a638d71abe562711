"""load_image: every PIL mode decodes to sensible 8-bit RGB, deep images scale instead of clipping, and
every bad file (missing, a folder, a broken link, unreadable, truncated, a decompression bomb) is one
CIRDataError line naming its source."""

from __future__ import annotations

import builtins
import colorsys
import errno
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile

from cir_lightning.data import images
from cir_lightning.data.images import DEFAULT_MAX_PIXELS, load_image
from cir_lightning.errors import CIRDataError

SRC = "q.jsonl:12"
H, W = 16, 24  # not square, so a transposed result cannot pass
GREY = (np.arange(H * W) % 256).astype(np.uint8).reshape(H, W)  # every 8-bit value at least once
_yy, _xx = np.mgrid[0:H, 0:W]
RGB = np.stack([_xx * 255 // (W - 1), _yy * 255 // (H - 1), 255 - _xx * 255 // (W - 1)], -1).astype(np.uint8)
ALPHA = ((_xx + _yy) * 255 // (W + H - 2)).astype(np.uint8)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(int)


def load_error(path: Path, **kwargs) -> str:
    """The message of the CIRDataError that loading ``path`` raises; it must be one line naming SRC."""
    with pytest.raises(CIRDataError) as info:
        load_image(path, source=SRC, **kwargs)
    message = str(info.value)
    assert type(info.value) is CIRDataError
    assert message.startswith(f"{SRC}: image `{path}`")
    assert "\n" not in message
    chained = info.value.__cause__ or (None if info.value.__suppress_context__ else info.value.__context__)
    assert chained is None  # no library traceback shown under it
    return message


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def write_png(path: Path, width: int, height: int, bit_depth: int, colour_type: int, data: bytes) -> Path:
    """A PNG written byte by byte, for what Pillow does not write (16-bit colour) and headers that lie."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    row = len(data) // height if len(data) >= height else 0
    raw = b"".join(b"\x00" + data[i * row:(i + 1) * row] for i in range(height)) if row else data
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw))
                     + png_chunk(b"IEND", b""))
    return path


def write_tiff(path: Path, array: np.ndarray, photometric: int, extra_samples: int | None = None) -> Path:
    """An uncompressed little-endian TIFF written byte by byte, for layouts Pillow does not write (48-bit
    RGB, premultiplied alpha). ``photometric``: 1 grey, 2 RGB; ``extra_samples``: 1 premultiplied alpha,
    2 plain alpha."""
    a = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<")))
    height, width = a.shape[:2]
    spp = 1 if a.ndim == 2 else a.shape[2]
    data = a.tobytes() + b"\x00" * (a.nbytes % 2)
    sample_format = {"u": 1, "i": 2, "f": 3}[a.dtype.kind]
    entries = [(256, 4, [width]), (257, 4, [height]), (258, 3, [a.dtype.itemsize * 8] * spp), (259, 3, [1]),
               (262, 3, [photometric]), (273, 4, [8]), (277, 3, [spp]), (278, 4, [height]),
               (279, 4, [a.nbytes]), (339, 3, [sample_format] * spp)]
    if extra_samples is not None:
        entries.append((338, 3, [extra_samples]))
    ifd_offset = 8 + len(data)
    extra_offset = ifd_offset + 2 + 12 * len(entries) + 4
    ifd, extra = struct.pack("<H", len(entries)), b""
    for tag, kind, values in sorted(entries):
        raw = struct.pack("<" + ("H" if kind == 3 else "I") * len(values), *values)
        if len(raw) > 4:
            raw, extra = struct.pack("<I", extra_offset + len(extra)), extra + raw
        ifd += struct.pack("<HHI", tag, kind, len(values)) + raw.ljust(4, b"\x00")
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_offset) + data + ifd + b"\x00\x00\x00\x00" + extra)
    return path


@pytest.fixture
def grey_png(tmp_path) -> Path:
    """The 8-bit original every deep grey image must reproduce exactly."""
    path = tmp_path / "grey8.png"
    Image.fromarray(GREY).save(path)
    return path


# ---------------------------------------------------------------------------------------------- deep images

def _pillow(mode_of_array, fmt):
    def make(path: Path, values: np.ndarray) -> Path:
        path = path.with_suffix("." + fmt)
        Image.fromarray(values.astype(mode_of_array)).save(path)
        return path
    return make


def _pgm(path: Path, values: np.ndarray) -> Path:
    path = path.with_suffix(".pgm")
    path.write_bytes(b"P5\n%d %d\n65535\n" % (W, H) + values.astype(">u2").tobytes())
    return path


DEEP_GREY = {  # name: (writer, values from the 8-bit GREY, the PIL mode Pillow 13 opens the file in)
    "16-bit PNG": (_pillow("<u2", "png"), lambda v: v * 257, "I;16"),
    "16-bit PNG, handmade": (
        lambda p, v: write_png(p.with_suffix(".png"), W, H, 16, 0, v.astype(">u2").tobytes()),
        lambda v: v * 257, "I;16"),
    "16-bit TIFF": (_pillow("<u2", "tif"), lambda v: v * 257, "I;16"),
    "16-bit big-endian TIFF": (_pillow(">u2", "tif"), lambda v: v * 257, "I;16B"),
    "16-bit PGM": (_pgm, lambda v: v * 257, "I"),
    "32-bit int TIFF": (_pillow("<i4", "tif"), lambda v: v * 257, "I"),
    "float TIFF in [0, 1]": (_pillow("<f4", "tif"), lambda v: v / 255, "F"),
    "float TIFF in [0, 255]": (_pillow("<f4", "tif"), lambda v: v, "F"),
}


@pytest.mark.parametrize("name", list(DEEP_GREY))
def test_deep_grey_file_loads_exactly_like_its_8_bit_original(name, tmp_path, grey_png):
    write, scale, opened_mode = DEEP_GREY[name]
    path = write(tmp_path / "deep", scale(GREY.astype(np.float64)))
    with Image.open(path) as img:
        assert img.mode == opened_mode
    out = load_image(path, source=SRC)
    assert out.mode == "RGB"
    assert out.size == (W, H)
    assert out.tobytes() == load_image(grey_png).tobytes()
    assert (pixels(out) == GREY[..., None]).all()


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N", "I"])
def test_every_16_bit_mode_keeps_the_high_byte(mode):
    values = GREY.astype(np.uint32) * 256 + 255  # a low byte of 255 does not round up
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I;16L": "<u2", "I;16N": "=u2", "I": "=i4"}[mode]
    img = Image.frombytes(mode, (W, H), values.astype(dtype).tobytes())
    assert img.mode == mode
    out = images._to_rgb(img, "x")
    assert (pixels(out) == GREY[..., None]).all()


def test_16_bit_colour_pngs_load_like_their_8_bit_originals(tmp_path):
    rgba = np.dstack([RGB, ALPHA])
    rgb48 = write_png(tmp_path / "rgb48.png", W, H, 16, 2, (RGB.astype(">u2") * 257).tobytes())
    rgba64 = write_png(tmp_path / "rgba64.png", W, H, 16, 6, (rgba.astype(">u2") * 257).tobytes())
    la = np.dstack([GREY, ALPHA])
    la32 = write_png(tmp_path / "la32.png", W, H, 16, 4, (la.astype(">u2") * 257).tobytes())
    Image.fromarray(RGB).save(tmp_path / "rgb.png")
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.merge("LA", [Image.fromarray(GREY), Image.fromarray(ALPHA)]).save(tmp_path / "la.png")
    # Pillow 13 opens 16-bit LA as RGBA; it keeps the high byte of 16-bit colour itself
    for deep, flat, mode in [(rgb48, "rgb.png", "RGB"), (rgba64, "rgba.png", "RGBA"),
                             (la32, "la.png", "RGBA")]:
        with Image.open(deep) as img:
            assert img.mode == mode
        assert load_image(deep).tobytes() == load_image(tmp_path / flat).tobytes()
    assert (pixels(load_image(rgba64)) == RGB).all()  # alpha dropped, colour kept


def test_16_bit_colour_tiffs_load_like_their_8_bit_originals(tmp_path):
    rgb48 = write_tiff(tmp_path / "rgb48.tif", RGB.astype(np.uint16) * 257, photometric=2)
    rgba64 = write_tiff(tmp_path / "rgba64.tif", np.dstack([RGB, ALPHA]).astype(np.uint16) * 257, 2, 2)
    for path in (rgb48, rgba64):
        assert (pixels(load_image(path)) == RGB).all()


@pytest.mark.parametrize(("values", "words"), [
    (GREY.astype(np.uint16), ["'I;16'", "values only up to 255", "all black", "8-bit image"]),
    (GREY.astype(np.float32) / 200_000, ["'F'", "all black", "[0, 1]"]),
])
def test_deep_image_that_would_decode_all_black_is_an_error(values, words, tmp_path):
    path = tmp_path / "dark.tif"
    Image.fromarray(values).save(path)
    message = load_error(path)
    for word in words:
        assert word in message


def test_all_zero_deep_image_is_black_not_an_error(tmp_path):
    path = tmp_path / "zero.png"
    Image.fromarray(np.zeros((H, W), np.uint16)).save(path)
    assert not pixels(load_image(path)).any()


@pytest.mark.parametrize(("values", "words"), [
    (np.full((H, W), -5, np.int32), ["32-bit integer", "'I'", "from -5 to -5", "0..65535"]),
    (np.full((H, W), 70000, np.int32), ["32-bit integer", "from 70000 to 70000"]),
    (np.full((H, W), 1000.0, np.float32), ["32-bit float", "from 1000 to 1000", "[0, 1] or [0, 255]"]),
    (np.full((H, W), -0.5, np.float32), ["32-bit float", "from -0.5 to -0.5"]),
    (np.full((H, W), np.nan, np.float32), ["32-bit float", "NaN or infinite"]),
])
def test_deep_values_outside_a_known_range_are_an_error(values, words, tmp_path):
    path = tmp_path / "odd.tif"
    Image.fromarray(values).save(path)
    message = load_error(path)
    for word in words:
        assert word in message


# ------------------------------------------------------------------------------------------- 8-bit modes

def _source(mode: str) -> Image.Image:
    rgb = Image.fromarray(RGB)
    if mode in ("RGBA", "LA", "PA"):
        rgba = Image.fromarray(np.dstack([RGB, ALPHA]))
        if mode == "PA":
            return Image.merge("PA", [rgb.convert("P"), Image.fromarray(ALPHA)])
        return rgba.convert(mode)
    return rgb.convert(mode)


MODES = [  # (mode saved, format, mode Pillow 13 opens the file in, largest difference to the source allowed)
    ("1", "png", "1", 0), ("1", "bmp", "1", 0), ("1", "tif", "1", 0),
    ("L", "png", "L", 0), ("L", "tif", "L", 0), ("L", "bmp", "L", 0), ("L", "gif", "P", 0),
    ("L", "jpg", "L", 3), ("L", "webp", "RGB", 3),
    ("P", "png", "P", 0), ("P", "gif", "P", 0), ("P", "bmp", "P", 0), ("P", "tif", "P", 0),
    ("RGB", "png", "RGB", 0), ("RGB", "tif", "RGB", 0), ("RGB", "bmp", "RGB", 0),
    ("RGB", "jpg", "RGB", 16), ("RGB", "webp", "RGB", 16),  # lossy, chroma subsampled
    ("RGBA", "png", "RGBA", 0), ("RGBA", "tif", "RGBA", 0), ("RGBA", "webp", "RGBA", 0),  # lossless WebP
    ("LA", "png", "LA", 0), ("LA", "tif", "LA", 0), ("PA", "tif", "PA", 0),
    ("CMYK", "tif", "CMYK", 0), ("CMYK", "jpg", "CMYK", 8),
    ("YCbCr", "tif", "YCbCr", 0), ("LAB", "tif", "LAB", 0),
]


@pytest.mark.parametrize(("mode", "fmt", "opened_mode", "tolerance"), MODES,
                         ids=[f"{m}-{f}" for m, f, _, _ in MODES])
def test_8_bit_mode_decodes_as_pillow_converts_it(mode, fmt, opened_mode, tolerance, tmp_path):
    src = _source(mode)
    path = tmp_path / f"x.{fmt}"
    src.save(path, **({"lossless": True, "exact": True} if mode == "RGBA" and fmt == "webp"
                      else {"quality": 95} if fmt in ("jpg", "webp") else {}))
    with Image.open(path) as img:
        assert img.mode == opened_mode
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            today = img.convert("RGB")  # what load_image always did: it must not move
    out = load_image(path, source=SRC)
    assert out.mode == "RGB"
    assert out.size == (W, H)
    assert out.tobytes() == today.tobytes()
    assert np.abs(pixels(out) - pixels(src.convert("RGB"))).max() <= tolerance


def test_8_bit_rgb_grey_and_alpha_keep_their_exact_values(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "rgb.png")
    Image.fromarray(GREY).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([RGB, ALPHA])).save(tmp_path / "rgba.png")
    Image.fromarray(GREY > 127).save(tmp_path / "bits.png")
    assert (pixels(load_image(tmp_path / "rgb.png")) == RGB).all()
    assert (pixels(load_image(tmp_path / "grey.png")) == GREY[..., None]).all()
    assert (pixels(load_image(tmp_path / "rgba.png")) == RGB).all()
    assert (pixels(load_image(tmp_path / "bits.png")) == np.where(GREY > 127, 255, 0)[..., None]).all()


@pytest.mark.parametrize("transparency", [None, 1, bytes([255, 0, 128])])
def test_palette_decodes_its_colours_with_or_without_transparency(transparency, tmp_path):
    palette = [10, 20, 30, 40, 50, 60, 70, 80, 90]
    img = Image.frombytes("P", (W, H), (GREY % 3).astype(np.uint8).tobytes())
    img.putpalette(palette)
    path = tmp_path / "p.png"
    img.save(path, **({} if transparency is None else {"transparency": transparency}))
    with Image.open(path) as opened:
        assert opened.mode == "P"
        assert opened.info.get("transparency") == transparency
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor Pillow's "should be converted to RGBA" warning
        out = load_image(path)
    expected = np.array(palette).reshape(3, 3)[GREY % 3]
    assert (pixels(out) == expected).all()


def test_premultiplied_alpha_is_undone(tmp_path):
    premultiplied = np.rint(GREY.astype(np.float64) * ALPHA / 255).astype(np.uint8)
    path = write_tiff(tmp_path / "la.tif", np.dstack([premultiplied, ALPHA]), photometric=1, extra_samples=1)
    with Image.open(path) as img:
        assert img.mode == "La"
    out = pixels(load_image(path, source=SRC))
    visible = ALPHA >= 128
    assert (np.abs(out[..., 0] - GREY)[visible] <= 1).all()  # not darkened by the alpha
    rgba_a = Image.merge("RGBa", [Image.fromarray(premultiplied)] * 3 + [Image.fromarray(ALPHA)])
    assert (np.abs(pixels(images._to_rgb(rgba_a, "x"))[..., 0] - GREY)[visible] <= 1).all()
    path = write_tiff(tmp_path / "rgba.tif", np.dstack([premultiplied] * 3 + [ALPHA]), 2, extra_samples=1)
    assert (np.abs(pixels(load_image(path))[..., 0] - GREY)[visible] <= 1).all()


def test_lab_is_converted_to_srgb_colours(tmp_path):
    srgb_to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"),
                                          "RGB", "LAB")
    path = tmp_path / "lab.tif"
    ImageCms.applyTransform(Image.fromarray(RGB), srgb_to_lab).save(path)
    out = pixels(load_image(path))
    assert np.median(np.abs(out - RGB)) <= 1
    assert np.abs(out - RGB).mean() <= 2
    path = tmp_path / "lab_greys.tif"
    Image.merge("LAB", [Image.fromarray(GREY)] + [Image.new("L", (W, H), 128)] * 2).save(path)
    out = pixels(load_image(path))
    assert (out.max(-1) - out.min(-1) <= 2).all()  # neutral stays grey
    assert out[GREY == 0].max() <= 1
    assert out[GREY == 255].min() >= 254
    assert (np.diff(out[0, :, 1]) >= 0).all()


def test_lab_without_littlecms_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "lab.tif"
    Image.new("LAB", (W, H), (128, 128, 128)).save(path)

    def missing():
        raise ImportError("The _imagingcms C module is not installed")

    monkeypatch.setattr("cir_lightning.pixels._lab_to_srgb", missing)  # where the conversion lives
    message = load_error(path)
    assert "CIELAB" in message
    assert "'LAB'" in message
    assert "LittleCMS" in message


def test_hsv_decodes_to_its_rgb_colours():
    hsv = Image.fromarray(RGB).convert("HSV")
    assert hsv.mode == "HSV"
    expected = [colorsys.hsv_to_rgb(*(c / 255 for c in px)) for px in np.asarray(hsv).reshape(-1, 3)]
    expected = np.array(expected).reshape(H, W, 3) * 255
    assert np.abs(pixels(images._to_rgb(hsv, "x")) - expected).max() <= 1


def test_mode_pillow_cannot_convert_is_a_clear_error(tmp_path, monkeypatch, grey_png):
    def refuse(self, mode=None, *args, **kwargs):
        raise ValueError(f"conversion from {self.mode} to {mode} not supported")

    monkeypatch.setattr(Image.Image, "convert", refuse)
    message = load_error(grey_png)
    assert "has PIL mode 'L', which cannot be converted to RGB" in message


def test_the_data_shrink_is_fire_s_release_shrink_so_translated_configs_see_its_pixels(tmp_path):
    """`max_short_edge: 380` (a translated FiRE config) shrank bicubic to round(side * scale): 508 x 380 where the
    release makes 507 x 380 (LANCZOS, int), and `release_compatible` then had nothing left to shrink."""
    import numpy as np

    from cir_lightning.backbones.xgenmm.release import release_image

    pixels = np.random.default_rng(0).integers(0, 256, (601, 803, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "big.png")
    ours = load_image(tmp_path / "big.png", max_short_edge=380)
    release = release_image(Image.open(tmp_path / "big.png"))
    assert ours.size == release.size == (507, 380)
    assert np.array_equal(np.asarray(ours), np.asarray(release))


def test_shrinking_keeps_the_aspect_ratio_and_never_enlarges(tmp_path):
    path = tmp_path / "rgb.png"
    Image.fromarray(RGB).save(path)
    assert load_image(path, max_short_edge=8).size == (12, 8)
    assert load_image(path, max_short_edge=100).size == (W, H)


# --------------------------------------------------------------------------------------- decompression bombs

def test_default_limit_is_pillows_own_error_threshold():
    assert DEFAULT_MAX_PIXELS == 178_956_970 == 2 * 89_478_485


def test_huge_header_is_refused_before_decoding(tmp_path):
    path = write_png(tmp_path / "bomb.png", 50_000, 50_000, 8, 0, b"\x00" * 64)
    before = Image.MAX_IMAGE_PIXELS
    message = load_error(path)
    assert Image.MAX_IMAGE_PIXELS == before
    for word in ["50000x50000", "2,500,000,000", "178,956,970", "decompression bombs", "max_image_pixels",
                 "max_pixels"]:
        assert word in message


def test_max_pixels_is_ours_to_set(tmp_path, grey_png):
    message = load_error(grey_png, max_pixels=W * H - 1)
    assert f"{W}x{H} = {W * H:,} pixels" in message
    assert f"limit of {W * H - 1:,}" in message
    assert load_image(grey_png, max_pixels=W * H).size == (W, H)
    assert load_image(grey_png, max_pixels=None).size == (W, H)


@pytest.mark.parametrize("fmt", ["png", "tif", "gif"])
def test_pillows_global_limit_does_not_interfere_and_is_restored(fmt, tmp_path, monkeypatch):
    path = tmp_path / f"grey.{fmt}"
    Image.fromarray(GREY).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # W * H = 384: above Pillow's error threshold, 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning either
        for limit in (DEFAULT_MAX_PIXELS, None, 10**12):
            assert (pixels(load_image(path, max_pixels=limit)) == GREY[..., None]).all()
    assert Image.MAX_IMAGE_PIXELS == 100


@pytest.mark.parametrize("raised", [Image.DecompressionBombError, Image.DecompressionBombWarning])
def test_pillows_check_while_decoding_becomes_one_line(raised, grey_png, monkeypatch):
    def bomb(self):
        raise raised("Image size (2500000000 pixels) exceeds limit of 178956970 pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", bomb)
    message = load_error(grey_png)
    assert "2500000000 pixels" in message
    assert "PIL.Image.MAX_IMAGE_PIXELS" in message


# ------------------------------------------------------------------------------------------- bad files

def test_missing_file(tmp_path):
    assert load_error(tmp_path / "nope.png").endswith("does not exist")


def test_folder_where_an_image_is_expected(tmp_path):
    (tmp_path / "x.png").mkdir()
    assert load_error(tmp_path / "x.png").endswith("is a folder, not an image file")


def test_broken_symbolic_link(tmp_path):
    os.symlink(tmp_path / "gone.png", tmp_path / "x.png")
    message = load_error(tmp_path / "x.png")
    assert "is a broken symbolic link" in message
    assert "gone.png" in message


@pytest.mark.parametrize(("err", "words"), [
    (PermissionError(errno.EACCES, "Permission denied"), "cannot be read: permission denied"),
    (OSError(errno.EIO, "Input/output error"), "cannot be read: Input/output error"),
])
def test_file_the_system_will_not_read(err, words, grey_png, monkeypatch):
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if str(file) == str(grey_png):
            raise err
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    assert load_error(grey_png).endswith(words)


def test_file_that_is_not_an_image(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"this is not a png")
    assert "cannot be read: not a recognised image format" in load_error(path)


@pytest.mark.parametrize("fmt", ["png", "jpg", "gif", "tif", "webp", "bmp"])
def test_truncated_file(fmt, tmp_path):
    path = tmp_path / f"x.{fmt}"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert "truncated or corrupt" in load_error(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_image_data(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[200:260] = bytes(60)  # inside the compressed pixels
    path.write_bytes(bytes(data))
    assert "truncated or corrupt" in load_error(path)
