"""FiRE's ``scripts/eval.py``, run by cir_lightning: ``python scripts/eval.py --config eval.example.yaml``.

Reads FiRE's release config (unknown keys are errors), prints the equivalent ``cir-lightning validate``
(or ``test``) config, evaluates through the library and prints the release's output: a JSON dict of
``Recall@K`` (fractions). See docs/fire.md for what differs from the release and why.
"""

from cir_lightning.commands.convert_fire import run_release_script

if __name__ == "__main__":
    run_release_script("eval")
