"""Golden fixtures: tiny checkpoints rebuilt from a recipe, the shared inputs, and the files a golden holds.

Used on both sides. ``scripts/goldens/make_*.py`` run the ORIGINAL project's embedding code in a side
virtual environment (the transformers version it pins) and write a golden; ``tests/backbones/goldens/``
run our backbones on the same checkpoint and inputs and compare. Only numpy, torch, safetensors and Pillow
are imported here, so both environments can run this file.

A golden folder ``tests/goldens/<name>/`` holds:

- ``checkpoint/``: the tiny checkpoint's files except its weights (``config.json``, tokenizer and
  processor files), as the original's ``save_pretrained`` wrote them (the hub layout users download);
- ``recipe.json``: ``{"seed": ..., "tensors": {name: {"dtype", "shape"[, "values"]}}}``; the weights are
  rebuilt from it by ``seeded_weights`` (every float tensor drawn from its own stream, keyed by the seed
  and the tensor's name, with numpy's PCG64, which numpy keeps stable across versions);
- ``outputs.npz``: what the original code produced (float32 embeddings, token ids, ...);
- ``provenance.json``: repository, commit, files, package versions, date and the command.

The inputs are shared by every golden: ``tests/goldens/inputs/`` (``make_inputs`` drew them once).
"""

from __future__ import annotations

import datetime
import json
import platform
import shutil
import sys
import zlib
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

GOLDENS = Path(__file__).resolve().parent
INPUTS = GOLDENS / "inputs"
WEIGHTS = "model.safetensors"

# the shared inputs: images of several sizes and modes, modifications and captions of several lengths
IMAGE_SPECS: dict[str, tuple[str, int, int]] = {  # file stem -> (PIL mode, width, height)
    "rgb_wide": ("RGB", 96, 64),
    "rgb_tall": ("RGB", 45, 117),
    "gray": ("L", 70, 70),
    "rgba": ("RGBA", 128, 40),
    "palette": ("P", 33, 51),
}
MODIFICATIONS = [
    "make it red",
    "is longer and has no sleeves, with a floral pattern on the front and a thin belt at the waist",
    "same dog but on a beach",
    "Replace the two cats with one parrot; keep the sofa.",
    "darker, café style",
]
CAPTIONS = [
    "a red dress",
    "a long sleeveless dress with a floral pattern and a thin belt",
    "two dogs",
    "A parrot sits on a grey sofa in a bright living room next to a window.",
    "dark",
]


def _draw(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for _ in range(4):
        fx, fy, phase = rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.2), rng.uniform(0, 6.28)
        wave = 127.5 + 100 * np.sin(fx * x + fy * y + phase) + rng.normal(0, 12, (height, width))
        channels.append(np.clip(wave, 0, 255).astype(np.uint8))
    rgba = Image.fromarray(np.stack(channels, -1), "RGBA")
    if mode == "RGBA":
        return rgba
    rgb = rgba.convert("RGB")
    return rgb.quantize(16) if mode == "P" else rgb.convert(mode)


def make_inputs(folder: Path = INPUTS) -> None:
    """Draw the shared inputs once (they are committed; running this again gives the same files)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i, (stem, (mode, width, height)) in enumerate(IMAGE_SPECS.items()):
        _draw(mode, width, height, seed=1000 + i).save(folder / "images" / f"{stem}.png")
    (folder / "texts.json").write_text(json.dumps({"modifications": MODIFICATIONS, "captions": CAPTIONS},
                                                  indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def load_images(convert_rgb: bool = False) -> list[Image.Image]:
    """The shared images, in ``IMAGE_SPECS`` order, in their own modes (``convert_rgb``: as RGB)."""
    images = []
    for stem in IMAGE_SPECS:
        with Image.open(INPUTS / "images" / f"{stem}.png") as image:
            image.load()
            images.append(image.convert("RGB") if convert_rgb else image.copy())
    return images


def load_texts() -> dict[str, list[str]]:
    """``{"modifications": [...], "captions": [...]}``: query i pairs image i with modification i."""
    return json.loads((INPUTS / "texts.json").read_text(encoding="utf-8"))


def image_paths() -> list[Path]:
    return [INPUTS / "images" / f"{stem}.png" for stem in IMAGE_SPECS]


# ----------------------------------------------------------------------------------------------- weights
def seeded_tensor(name: str, dtype: str, shape: list[int], seed: int) -> torch.Tensor:
    """One float tensor of a tiny checkpoint: 1-D ``*weight`` (norm scales) near 1, 1-D ``*bias`` near 0,
    everything else N(0, 0.05^2); drawn from PCG64 seeded with (seed, crc32(name))."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    values = rng.standard_normal(int(np.prod(shape, dtype=np.int64)))
    if len(shape) == 1 and name.endswith("weight"):
        values = 1.0 + 0.1 * values
    elif len(shape) == 1 and name.endswith("bias"):
        values = 0.02 * values
    else:
        values = 0.05 * values
    return torch.from_numpy(values.astype(np.float32)).reshape(shape).to(getattr(torch, dtype))


def seeded_weights(recipe: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict a recipe describes (non-float tensors, such as position ids, keep their values)."""
    weights = {}
    for name, spec in recipe["tensors"].items():
        if "values" in spec:
            weights[name] = torch.tensor(spec["values"], dtype=getattr(torch, spec["dtype"])).reshape(spec["shape"])
        else:
            weights[name] = seeded_tensor(name, spec["dtype"], spec["shape"], recipe["seed"])
    return weights


def write_recipe(checkpoint: Path, golden: Path, seed: int) -> dict[str, Any]:
    """Generator side: describe ``checkpoint``'s ``model.safetensors`` (as ``save_pretrained`` wrote it) in
    ``golden/recipe.json``, replace the weights with the seeded ones, and copy every other file of the
    checkpoint to ``golden/checkpoint/``. The original code then loads ``checkpoint`` as it is."""
    state = load_file(str(checkpoint / WEIGHTS))
    tensors: dict[str, Any] = {}
    for name, tensor in sorted(state.items()):
        spec: dict[str, Any] = {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape)}
        if not tensor.is_floating_point():
            if tensor.numel() > 4096:
                raise ValueError(f"{name}: a non-float tensor of {tensor.numel()} values is too big for a recipe")
            spec["values"] = tensor.flatten().tolist()
        tensors[name] = spec
    recipe = {"seed": seed, "tensors": tensors}
    save_file(seeded_weights(recipe), str(checkpoint / WEIGHTS), metadata={"format": "pt"})
    golden.mkdir(parents=True, exist_ok=True)
    (golden / "recipe.json").write_text(json.dumps(recipe, indent=1) + "\n")
    target = golden / "checkpoint"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(checkpoint, target, ignore=shutil.ignore_patterns(WEIGHTS, "*.bin", "__pycache__"))
    return recipe


def materialize(golden: Path, dest: Path) -> Path:
    """Test side: the golden's tiny checkpoint as a folder (its files + the weights from the recipe)."""
    shutil.copytree(golden / "checkpoint", dest, dirs_exist_ok=True)
    recipe = json.loads((golden / "recipe.json").read_text())
    save_file(seeded_weights(recipe), str(dest / WEIGHTS), metadata={"format": "pt"})
    return dest


# ----------------------------------------------------------------------------------------------- outputs
def save_outputs(golden: Path, **arrays: Any) -> None:
    """Write ``outputs.npz`` (tensors become numpy arrays; float tensors float32)."""
    out = {}
    for key, value in arrays.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            value = value.float() if value.is_floating_point() else value
            value = value.numpy()
        out[key] = np.asarray(value)
    np.savez(golden / "outputs.npz", **out)


def load_outputs(golden: Path) -> dict[str, np.ndarray]:
    with np.load(golden / "outputs.npz") as data:
        return {key: data[key] for key in data.files}


def write_provenance(golden: Path, repository: str, commit: str, files: list[str], packages: list[str],
                     command: str, notes: str = "") -> None:
    """Where the golden came from: the original's repository, commit and files, the side environment's
    package versions, the date and the command that wrote it."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    record = {"repository": repository, "commit": commit, "files": files, "python": sys.version.split()[0],
              "platform": platform.platform(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "packages": versions, "command": command,
              "date": datetime.date.today().isoformat(), "notes": notes}
    (golden / "provenance.json").write_text(json.dumps(record, indent=1) + "\n")
