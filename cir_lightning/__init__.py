"""cir_lightning: composed image retrieval with PyTorch Lightning."""

__version__ = "0.1.0"
