"""The public face: the names users import, each with an example that starts with its own import line."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

PACKAGES = ["cir_lightning", "cir_lightning.data", "cir_lightning.backbones", "cir_lightning.retrieval"]
NAMES = [(p, n) for p in PACKAGES for n in importlib.import_module(p).__all__
         if not n.startswith("__") and n != "PRESETS"]  # PRESETS is a dict: its docstring is a comment


def test_the_top_level_exports_what_users_need():
    from cir_lightning import (  # noqa: F401
        CIRCODataModule,
        CIRModule,
        CIRRDataModule,
        FashionIQDataModule,
        FireLoss,
        JsonlCIRDataModule,
        RetrievalCallback,
        SearchConfig,
        build_backbone,
    )


@pytest.mark.parametrize(("package", "name"), NAMES, ids=[f"{p}.{n}" for p, n in NAMES])
def test_every_exported_name_has_an_example_starting_with_its_import(package, name):
    doc = inspect.getdoc(getattr(importlib.import_module(package), name)) or ""
    lines = [line.strip()[4:] for line in doc.splitlines() if line.strip().startswith(">>>")]
    assert lines, f"{package}.{name} has no example"
    assert lines[0].startswith(("from cir_lightning", "import cir_lightning")), lines[0]


def test_the_retrieval_core_imports_without_lightnings_trainer():
    code = ("import sys, cir_lightning.retrieval; "
            "print(any(m.startswith('lightning.pytorch.trainer') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
