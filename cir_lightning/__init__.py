"""cir_lightning: composed image retrieval with PyTorch Lightning.

The names most users need are importable from the top level; each is imported when first used, so
``import cir_lightning.retrieval`` (search, metrics, caches) does not pay for the backbones or the
LightningModule.

Example:
    >>> from cir_lightning import CIRModule, SearchConfig, build_backbone
    >>> SearchConfig().factory
    'Flat'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CIRModule": "cir_lightning.module",
    "FireLoss": "cir_lightning.losses",
    "CIRDataModule": "cir_lightning.data",
    "JsonlCIRDataModule": "cir_lightning.data",
    "FashionIQDataModule": "cir_lightning.data",
    "CIRRDataModule": "cir_lightning.data",
    "CIRCODataModule": "cir_lightning.data",
    "SyntheticCIRDataModule": "cir_lightning.data",
    "build_backbone": "cir_lightning.backbones",
    "LoRA": "cir_lightning.backbones",
    "Prompts": "cir_lightning.backbones",
    "SearchConfig": "cir_lightning.retrieval",
    "RetrievalCallback": "cir_lightning.retrieval",
    "RetrievalEvaluator": "cir_lightning.retrieval",
    "search": "cir_lightning.retrieval",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import an exported name from its module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cir_lightning' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
