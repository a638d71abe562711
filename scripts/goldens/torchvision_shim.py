"""A stand-in for the few torchvision pieces xGen-MM's ``image_processing_blip_3.py`` uses, for goldens.

The side environment of ``make_xgenmm.py`` has no torchvision (its wheels pin torch versions). The image
processor imports ``Normalize, Compose, RandomResizedCrop, InterpolationMode, ToTensor, Resize, CenterCrop,
ColorJitter, Grayscale`` and ``torchvision.transforms.functional``, and calls only ``Resize((S, S), BICUBIC)``,
``ToTensor()``, ``Normalize(mean, std)`` and ``Compose`` on PIL images. Those four compute here what
torchvision (0.17, the version xGen-MM's setup.sh pins) computes for a PIL input:

- ``Resize``: a no-op when the image already has the target (height, width) (torchvision returns the image
  unchanged then), else ``img.resize((w, h), PIL resample)``, torchvision's ``F_pil.resize``;
- ``ToTensor``: ``np.array(pic, uint8)`` viewed (H, W, C), permuted to (C, H, W), ``float32`` and ``div(255)``;
- ``Normalize``: ``tensor.sub_(mean).div_(std)`` with mean / std as tensors of the input's dtype, (C, 1, 1).

The other names exist so that the import succeeds; calling them raises.
"""

from __future__ import annotations

import enum
import sys
import types

import numpy as np
import torch
from PIL import Image


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


_PIL = {InterpolationMode.NEAREST: Image.Resampling.NEAREST, InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
        InterpolationMode.BICUBIC: Image.Resampling.BICUBIC, InterpolationMode.BOX: Image.Resampling.BOX,
        InterpolationMode.HAMMING: Image.Resampling.HAMMING, InterpolationMode.LANCZOS: Image.Resampling.LANCZOS}


class Resize:
    def __init__(self, size, interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=True):
        if max_size is not None or isinstance(size, int) or len(size) != 2:
            raise NotImplementedError("the shim supports Resize((h, w)) only")
        self.size, self.interpolation = [int(s) for s in size], interpolation

    def __call__(self, img: Image.Image) -> Image.Image:
        h, w = self.size
        if [img.height, img.width] == [h, w]:
            return img
        return img.resize((w, h), _PIL[self.interpolation])


class ToTensor:
    def __call__(self, pic: Image.Image) -> torch.Tensor:
        if pic.mode not in ("RGB", "L", "RGBA", "CMYK", "P", "LA"):
            raise NotImplementedError(f"the shim's ToTensor handles 8-bit modes, not {pic.mode}")
        img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
        img = img.view(pic.size[1], pic.size[0], len(pic.getbands())).permute((2, 0, 1)).contiguous()
        return img.to(dtype=torch.get_default_dtype()).div(255)


class Normalize:
    def __init__(self, mean, std, inplace=False):
        self.mean, self.std = mean, std

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype).view(-1, 1, 1)
        return tensor.sub_(mean).div_(std)


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


class _Unused:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} is not part of the torchvision shim")


class RandomResizedCrop(_Unused): ...
class CenterCrop(_Unused): ...
class ColorJitter(_Unused): ...
class Grayscale(_Unused): ...


def install() -> None:
    """Register ``torchvision``, ``torchvision.transforms`` and ``torchvision.transforms.functional``."""
    if "torchvision" in sys.modules:
        raise RuntimeError("a real torchvision is imported already; the goldens use the shim")
    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    for name in ("InterpolationMode", "Resize", "ToTensor", "Normalize", "Compose", "RandomResizedCrop",
                 "CenterCrop", "ColorJitter", "Grayscale"):
        setattr(transforms, name, globals()[name])
    functional.InterpolationMode = InterpolationMode
    transforms.functional = functional
    root.transforms = transforms
    root.__version__ = "0.0-shim"
    sys.modules.update({"torchvision": root, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})
