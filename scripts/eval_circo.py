"""BGE-VL's CIRCO test ranking (VectorSpaceLab/MegaPairs ``eval/eval_Circo.py``) on cir_lightning.

Ranks ``circo_query.jsonl`` against ``circo_corpus.jsonl`` (in ``--data_dir``, default ``./eval/data``) and
writes ``{"<query id>": [top-50 corpus contents]}`` to ``--result_save_path`` (never over an existing file),
the file CIRCO's evaluation server takes::

    python scripts/eval_circo.py --model_name BAAI/BGE-VL-large --image_dir /data/coco/unlabeled2017 \\
        --result_save_path ./eval/mmret_large_circo.json

``--help`` lists every flag; docs/bgevl.md maps each to the library and says what differs.
"""

import sys

from cir_lightning.commands.bgevl import main_circo

if __name__ == "__main__":
    sys.exit(main_circo())
