"""Data: DataModules yielding raw CIR samples (images, texts, ids) and the datasets behind them."""

from cir_lightning.data.base import CIRDataModule
from cir_lightning.data.bgevl import BGEVLDataModule
from cir_lightning.data.circo import CIRCODataModule
from cir_lightning.data.cirr import CIRRDataModule
from cir_lightning.data.fashioniq import FashionIQDataModule
from cir_lightning.data.jsonl import JsonlCIRDataModule
from cir_lightning.data.synthetic import SyntheticCIRDataModule, make_synthetic_cir

__all__ = [
    "BGEVLDataModule",
    "CIRCODataModule",
    "CIRDataModule",
    "CIRRDataModule",
    "FashionIQDataModule",
    "JsonlCIRDataModule",
    "SyntheticCIRDataModule",
    "make_synthetic_cir",
]
