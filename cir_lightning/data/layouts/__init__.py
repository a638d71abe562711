"""The benchmarks' files and protocols, apart from their DataModules (torchgeo's datasets/datamodules split).

One module per layout: ``fashioniq``, ``cirr``, ``circo`` and ``jsonl`` (the custom format). Each reads
and checks its files into the datasets of ``cir_lightning.data.datasets`` and holds what its protocol
adds (query texts, averages, evaluation-server files), and is the one place to import those names from. They
import no DataModule: the thin ``cir_lightning.data.<benchmark>`` DataModules import them (and export only
themselves).
"""
