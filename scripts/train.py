"""FiRE's ``scripts/train.py``, run by cir_lightning: ``python scripts/train.py --config train_stage2.example.yaml``.

Reads FiRE's release config (unknown keys are errors), prints the equivalent ``cir-lightning fit`` config,
trains through the library and prints the release's line ``{"status": "ok", "output_dir": ...}`` with the
folder of the exported adapter. See docs/fire.md.
"""

from cir_lightning.commands.convert_fire import run_release_script

if __name__ == "__main__":
    run_release_script("train")
