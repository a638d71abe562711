"""Data: DataModules yielding raw CIR samples (images, texts, ids) and the datasets behind them."""

from cir_lightning.data.base import CIRDataModule
from cir_lightning.data.jsonl import JsonlCIRDataModule
from cir_lightning.data.synthetic import SyntheticCIRDataModule, make_synthetic_cir

__all__ = ["CIRDataModule", "JsonlCIRDataModule", "SyntheticCIRDataModule", "make_synthetic_cir"]
