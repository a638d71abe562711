"""BGE-VL's FashionIQ evaluation (VectorSpaceLab/MegaPairs ``eval/eval_fashioniq.py``) on cir_lightning.

The original's flags, defaults and console output; the work runs through the library (a Lightning
``Trainer``, DDP on several GPUs, ``DualEncoderBackbone``, ``BGEVLDataModule``, ``CIRModule``). Run it where
the original runs (its data files in ``./eval/data``), or point ``--data_dir`` at them::

    python scripts/eval_fashioniq.py --model_name BAAI/BGE-VL-large --image_dir /data/fashioniq
    python scripts/eval_fashioniq.py --model_name BAAI/BGE-VL-base --image_dir /data/fashioniq --fp16 --save_embedding
    python scripts/eval_fashioniq.py --model_name BAAI/BGE-VL-base --image_dir /data/fashioniq --fp16 --load_embedding

``--help`` lists every flag; docs/bgevl.md maps each to the library and says what differs.
"""

import sys

from cir_lightning.commands.bgevl import main_fashioniq

if __name__ == "__main__":
    sys.exit(main_fashioniq())
