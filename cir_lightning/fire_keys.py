"""Which keys of a FiRE release config a translated run reads (``fire_mapping.translate`` notes the others).

The release reads one YAML schema for both of its scripts and ignores, without a word, what a run does not
use: a training file's ``eval`` keys, ``data.dress_type`` unless ``data.task`` is ``fashioniq``, the
``model.lora`` settings beside an adapter. A translation accepts the same files, and says which keys the
file sets that the run does not read, and why, so that none is ignored silently.
"""

from __future__ import annotations

from typing import Any

__all__ = ["unused_keys", "unused_note"]

_EVAL_ONLY = ("prompts.eval_query", "eval.max_length")
_TRAIN_ONLY = ("prompts.train_query", "prompts.train_target", "model.freeze_base_model", "data.train_metadata")
_BESIDE = ("training.output_dir", "training.fp16")  # an evaluation writes below output_dir; fp16 has its own note


def unused_keys(s: dict[str, Any], train: bool) -> dict[str, str]:
    """The keys the FiRE file ``s`` sets (``s["_lines"]``) that the translated training (``train``) or
    evaluation does not read, each with why; the release's script of the same purpose ignores them too.

    Example:
        >>> from cir_lightning.fire_config import RELEASE_DEFAULTS
        >>> from cir_lightning.fire_keys import unused_keys
        >>> unused_keys({**RELEASE_DEFAULTS, "_lines": {"data.dress_type": 9, "eval.ks": 12}}, train=False)
        {'data.dress_type': 'read with `data.task: fashioniq` only'}
    """
    task = s["data.task"]
    if train:
        why = dict.fromkeys(_EVAL_ONLY, "read by evaluations")
        why["data.split"] = "read by evaluations (a training run validates on the val split)"
        if task == "custom_jsonl" and not s["data.query_metadata"]:
            why |= dict.fromkeys(("eval.batch_size", "eval.ks", "eval.exclude_reference"),
                                 "read by validation, and there is no `data.query_metadata` to validate on")
    else:
        why = dict.fromkeys([*_TRAIN_ONLY, *(k for k in s if k.startswith("training.") and k not in _BESIDE)],
                            "read by training")
        if task == "custom_jsonl":
            why["data.split"] = "read with `data.task: fashioniq` or `cirr` only"
    if task != "fashioniq":
        why["data.dress_type"] = "read with `data.task: fashioniq` only"
    if task != "custom_jsonl":
        why |= dict.fromkeys(("data.query_metadata", "data.gallery_metadata"), f"`data.task: {task}` has its own queries")
    lora = [k for k in s if k.startswith("model.lora.")]
    if s["model.adapter_path"]:
        why |= dict.fromkeys(lora, "the adapter's own adapter_config.json sets them (`model.adapter_path`)")
    elif not s["model.lora.enabled"]:
        why |= dict.fromkeys((k for k in lora if k != "model.lora.enabled"), "`model.lora.enabled` is false")
    return {key: reason for key, reason in sorted(why.items(), key=lambda kv: s["_lines"].get(kv[0], 0))
            if key in s["_lines"]}


def unused_note(s: dict[str, Any], train: bool) -> list[str]:
    """The translation's note naming ``unused_keys`` with their lines, or none.

    Example:
        >>> from cir_lightning.fire_config import RELEASE_DEFAULTS
        >>> from cir_lightning.fire_keys import unused_note
        >>> print(*unused_note({**RELEASE_DEFAULTS, "_lines": {"eval.max_length": 30}}, train=True))
        set in the file, read neither by this run nor by the release's scripts/train.py: `eval.max_length` (line 30: read by evaluations)
    """
    unused = unused_keys(s, train)
    if not unused:
        return []
    listed = "; ".join(f"`{key}` (line {s['_lines'][key]}: {reason})" for key, reason in unused.items())
    return [f"set in the file, read neither by this run nor by the release's scripts/{'train' if train else 'eval'}.py: "
            + listed]
