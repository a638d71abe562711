"""xGen-MM pre-processing without torchvision: anyres tiling of images (PIL + numpy) and a processor.

Per image (``Blip3ImageProcessor`` with ``image_aspect_ratio="anyres"``): crop 0 is the whole image
squashed to S x S (PIL's default resample); then the image is fitted (aspect kept, centred on black) to
the grid canvas chosen by ``select_best_resolution`` and cut into S x S tiles, row-major. The fitted size
(``fitted_size``) follows the original's order of operations (scale = target / size first, then
``ceil(size * scale)``), so every image size rounds the same way as in xGen-MM. Every crop is converted to
RGB and normalised with mean = std = 0.5. ``XGenMMProcessor`` adds the tokenizer so that ``MLLMCollator``
can drive it like a Hugging Face processor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cir_lightning.backbones.xgenmm.layout import select_best_resolution
from cir_lightning.backbones.xgenmm.modeling import ANYRES_GRIDS, XGenMMConfig
from cir_lightning.errors import CIRModelError

EXTRA_TOKENS = ["<image>", "<image placeholder>", "<|endofchunk|>"]


def fitted_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(new_w, new_h) of an image of ``size`` (w, h) fitted into ``target`` (w, h), aspect ratio kept.

    The arithmetic is the original's, in its order: the two scales ``target / size`` first, the side with
    the smaller scale (``<``) fills the target, the other is ``min(ceil(side * scale), target side)``.
    Writing ``ceil(h * tw / w)`` instead rounds differently when the product lands just above an integer.

    Example:
        >>> fitted_size((100, 50), (80, 80))
        (80, 40)
        >>> fitted_size((800, 600), (56, 56))  # 600 * (56 / 800) = 42.00000000000001 -> 43, as the original
        (56, 43)
        >>> fitted_size((68, 85), (384, 768))
        (384, 481)
    """
    w, h = size
    tw, th = target
    scale_w, scale_h = tw / w, th / h
    if scale_w < scale_h:
        return tw, min(math.ceil(h * scale_w), th)
    return min(math.ceil(w * scale_h), tw), th


def resize_and_pad(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Fit ``image`` into ``target`` (w, h) at ``fitted_size``, centred on a black canvas.

    Example:
        >>> resize_and_pad(Image.new("RGB", (100, 50), "white"), (80, 80)).getbbox()
        (0, 20, 80, 60)
    """
    tw, th = target
    new_w, new_h = fitted_size(image.size, target)
    canvas = Image.new("RGB", (tw, th), (0, 0, 0))
    canvas.paste(image.resize((new_w, new_h)), ((tw - new_w) // 2, (th - new_h) // 2))
    return canvas


class XGenMMImageProcessor:
    """Anyres tiling and normalisation.

    Args:
        crop_size: side S of every crop (384 for SigLIP so400m-384).
        grids: candidate canvases (width, height), multiples of ``crop_size``.
        anyres: tile (True) or only the squashed whole image (False).
        mean: per-channel mean.
        std: per-channel standard deviation.

    Example:
        >>> proc = XGenMMImageProcessor(crop_size=28, grids=[[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]])
        >>> proc.crops(Image.new("RGB", (200, 100))).shape  # whole view + two crops side by side
        torch.Size([3, 3, 28, 28])
    """

    def __init__(self, crop_size: int = 384, grids: Sequence[Sequence[int]] = ANYRES_GRIDS, anyres: bool = True,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)) -> None:
        self.crop_size = crop_size
        self.grids = [list(g) for g in grids]
        bad = [g for g in self.grids if g[0] % crop_size or g[1] % crop_size]
        if bad:
            raise CIRModelError(f"anyres grids {bad} are not multiples of the crop size {crop_size}")
        self.anyres = anyres
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def _tensor(self, crop: Image.Image) -> Tensor:
        s = self.crop_size
        if crop.size != (s, s):
            crop = crop.resize((s, s), Image.Resampling.BICUBIC)
        array = np.asarray(crop.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(((array - self.mean) / self.std).transpose(2, 0, 1).copy())

    def crops(self, image: Image.Image) -> Tensor:
        """(1 + tiles, 3, S, S): the squashed whole image, then the tiles row-major."""
        s = self.crop_size
        views = [image.resize((s, s))]
        if self.anyres:
            gw, gh = select_best_resolution(image.size, self.grids)
            canvas = resize_and_pad(image, (gw, gh))
            views += [canvas.crop((x, y, x + s, y + s)) for y in range(0, gh, s) for x in range(0, gw, s)]
        return torch.stack([self._tensor(v) for v in views])

    def __call__(self, images: Sequence[Image.Image]) -> dict[str, Tensor]:
        """``pixel_values`` (images, max_crops, 3, S, S) zero-padded, ``image_num_crops``, ``image_sizes`` (w, h)."""
        crops = [self.crops(img) for img in images]
        most = max(len(c) for c in crops)
        pixels = torch.zeros(len(crops), most, 3, self.crop_size, self.crop_size)
        for i, c in enumerate(crops):
            pixels[i, : len(c)] = c
        return {"pixel_values": pixels, "image_num_crops": torch.tensor([len(c) for c in crops]),
                "image_sizes": torch.tensor([img.size for img in images], dtype=torch.long)}

    def to_dict(self) -> dict[str, Any]:
        return {"image_processor_type": "Blip3ImageProcessor", "size": [self.crop_size, self.crop_size],
                "grids": self.grids, "image_aspect_ratio": "anyres" if self.anyres else "none",
                "image_mean": self.mean.tolist(), "image_std": self.std.tolist(), "resize_mode": "squash",
                "interpolation_mode": "bicubic", "do_resize": True}


class XGenMMProcessor:
    """Tokenizer + image processor with the interface of a Hugging Face processor.

    ``__call__(images=, text=, padding=True, return_tensors="pt")`` returns ``input_ids``,
    ``attention_mask`` and, with images, ``pixel_values``, ``image_num_crops`` and ``image_sizes``.
    Images are matched to the ``<image>`` tokens in reading order over the batch.

    Args:
        tokenizer: a tokenizer with ``<image>`` (added here, as xGen-MM does, when missing).
        image_processor: the anyres image processor.
    """

    image_token = "<image>"

    def __init__(self, tokenizer: Any, image_processor: XGenMMImageProcessor) -> None:
        missing = [t for t in EXTRA_TOKENS if t not in tokenizer.get_vocab()]
        if missing:  # xGen-MM's update_special_tokens: <image>, <image placeholder>, <|endofchunk|>, in order
            tokenizer.add_tokens(missing, special_tokens=True)
        tokenizer.padding_side = "left"
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    @classmethod
    def from_pretrained(cls, folder: str | Path, config: XGenMMConfig, anyres: bool = True) -> XGenMMProcessor:
        """Tokenizer files from ``folder``; crop size and grids from ``config``; mean/std from the folder's
        preprocessor_config.json when present.

        Example:
            >>> import tempfile
            >>> from cir_lightning.backbones.xgenmm.loading import read_config
            >>> from cir_lightning.backbones.xgenmm.tiny import make_tiny_xgenmm
            >>> path = make_tiny_xgenmm(tempfile.mkdtemp() + "/x")
            >>> proc = XGenMMProcessor.from_pretrained(path, read_config(path))
            >>> proc.tokenizer.convert_ids_to_tokens(proc.image_token_id), proc.tokenizer.padding_side
            ('<image>', 'left')
        """
        from transformers import AutoTokenizer

        pp = Path(folder) / "preprocessor_config.json"
        stats = json.loads(pp.read_text()) if pp.exists() else {}
        try:
            # config= spares AutoTokenizer from parsing config.json (model_type "xgenmm" is unknown to it)
            tokenizer = AutoTokenizer.from_pretrained(str(folder), config=config.phi3_config())
        except (OSError, ValueError) as err:
            raise CIRModelError(f"cannot load the tokenizer of `{folder}`: {err}") from err
        crop = int(config.siglip["image_size"])
        return cls(tokenizer, XGenMMImageProcessor(crop, config.anyres_grids, anyres and config.anyres,
                                                   stats.get("image_mean", (0.5,) * 3), stats.get("image_std", (0.5,) * 3)))

    def save_pretrained(self, folder: str | Path) -> None:
        self.tokenizer.save_pretrained(str(folder))
        (Path(folder) / "preprocessor_config.json").write_text(json.dumps(self.image_processor.to_dict(), indent=2))

    def __call__(self, images: Sequence[Image.Image] | None = None, text: str | Sequence[str] | None = None,
                 padding: bool | str = True, return_tensors: str = "pt") -> dict[str, Tensor]:
        if return_tensors != "pt":
            raise CIRModelError("XGenMMProcessor returns PyTorch tensors only (`return_tensors='pt'`)")
        texts = [text] if isinstance(text, str) else list(text or [])
        out = dict(self.tokenizer(texts, padding=padding, return_tensors="pt"))
        n_tokens = sum(t.count(self.image_token) for t in texts)
        images = list(images or [])
        if n_tokens != len(images):
            raise CIRModelError(f"the texts hold {n_tokens} `{self.image_token}` token(s) but {len(images)} "
                                "image(s) were given")
        if images:
            out.update(self.image_processor(images))
        return out
