"""How each setting of a FiRE release config becomes a cir_lightning option (the table is in docs/fire.md).

``translate`` takes the settings ``fire_config.read_fire_config`` read (dotted keys, the release's defaults
filled in) and returns the LightningCLI config, the subcommand that runs it and the notes on what differs
from the release. The translated runs follow the paper and the official protocols where the release has
defects (docs/fire.md, "What differs from the release"): LoRA on Phi-3's real projection names, CIRR's
reference-only exclusion and FashionIQ's val split; everything else keeps the release's values.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cir_lightning.backbones.prompts import PRESETS, Prompts
from cir_lightning.errors import CIRConfigError
from cir_lightning.fire_adapter import find_adapter, release_adapter
from cir_lightning.fire_keys import unused_note

__all__ = ["at", "find_adapter", "split_end_block", "translate"]

_FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj",
          "up_proj": "gate_up_proj"}  # Llama's projection names -> the fused Phi-3 projection holding them
_CATEGORIES = ["dress", "shirt", "toptee"]
_BLOCK = re.compile(r"\s*(<\|[^|<>]+\|>)\s*$")


def at(settings: dict[str, Any], key: str) -> str:
    """``file:line: `key``` (where the config ``settings`` set ``key``), for messages.

    Example:
        >>> from cir_lightning.fire_mapping import at
        >>> at({"_file": "eval.yaml", "_lines": {"data.task": 7}}, "data.task")
        'eval.yaml:7: `data.task`'
    """
    line = settings["_lines"].get(key)
    return f"{settings['_file']}:{line}: `{key}`" if line else f"{settings['_file']}: `{key}`"


def split_end_block(settings: dict[str, Any], key: str) -> tuple[str, str | None, int]:
    """A release prompt as (the template before its end block, the block's token, how many).

    Example:
        >>> from cir_lightning.fire_mapping import split_end_block
        >>> split_end_block({"p": "Describe the image <image> ? <|end|> <|end|>"}, "p")
        ('Describe the image <image> ?', '<|end|>', 2)
    """
    text, tokens = settings[key], []
    while (match := _BLOCK.search(text)) is not None:
        tokens.append(match.group(1))
        text = text[:match.start()]
    if len(set(tokens)) > 1:
        raise CIRConfigError(f"{at(settings, key)} ends with different tokens {sorted(set(tokens))}; cir_lightning "
                             "appends one token repeated (`eos_token` x `eos_block_size`) and pools over it")
    return text, (tokens[0] if tokens else None), len(tokens)


def _template(text: str, fields: dict[str, str]) -> str:
    """A release prompt (placeholders replaced literally) as a ``str.format`` template: other braces
    doubled, the release's field names renamed to ours."""
    text = text.replace("{", "{{").replace("}", "}}")
    for theirs, ours in fields.items():
        text = text.replace("{{" + theirs + "}}", "{" + ours + "}")
    return text


def _prompts(s: dict[str, Any], train: bool) -> tuple[dict[str, Any], str, int, str]:
    """The backbone's prompts, its end token and block size, and the target side."""
    query_key = "prompts.train_query" if train else "prompts.eval_query"
    if "{reference_caption}" in s[query_key]:
        raise CIRConfigError(f"{at(s, query_key)} uses {{reference_caption}}: cir_lightning's queries are the "
                             "reference image and the modification only")
    keys = [query_key, "prompts.gallery"] + (["prompts.train_target"] if train else [])
    parts = {key: split_end_block(s, key) for key in keys}
    _, token, size = parts[query_key]
    for key, (_, other, n) in parts.items():
        if n == 0 or (other, n) != (token, size):
            block = f"the same block of end tokens as `{query_key}` ({size} x {token})" if size else \
                "a block of end tokens (the release's: ' <|end|>' x 5)"
            raise CIRConfigError(f"{at(s, key)} must end with {block}: cir_lightning appends one block to every "
                                 "prompt and pools there")
    ours = {"query": _template(parts[query_key][0], {"modification": "modification"}),
            "gallery": _template(parts["prompts.gallery"][0], {})}
    side = "image"
    if train:
        target = parts["prompts.train_target"][0]
        if "{target_caption}" in target and "<image>" not in target:
            side, ours["text"] = "caption", _template(target, {"target_caption": "text"})
        elif "<image>" not in target or target != parts["prompts.gallery"][0]:
            raise CIRConfigError(f"{at(s, 'prompts.train_target')} must be a caption prompt ({{target_caption}}, no "
                                 "<image>) or the gallery prompt: cir_lightning embeds image targets like the gallery")
    fire = PRESETS["fire"]
    prompts = {"preset": "fire", **{k: v for k, v in ours.items() if v != getattr(fire, k)}}
    try:
        Prompts(**prompts).resolve()
    except CIRConfigError as err:
        raise CIRConfigError(f"{s['_file']}: `prompts`: {err}") from None
    return prompts, token, size, side


def _lora(s: dict[str, Any], train: bool, notes: list[str], run: bool) -> dict[str, Any] | None:
    adapter = s["model.adapter_path"]
    if adapter:
        found, note = release_adapter(adapter, at(s, "model.adapter_path"), must_exist=run)
        notes += [note] if note else []
        notes.append("the adapter's rank, alpha and target names are its own (adapter_config.json), as peft loads "
                     "it in the release; names that match nothing in Phi-3 are left out, saying so")
        return {"init_adapter": found}
    if not s["model.lora.enabled"]:
        if train:
            raise CIRConfigError(f"{at(s, 'model.lora.enabled')} is false and there is no `model.adapter_path`: "
                                 "nothing would be trained (cir_lightning trains LoRA adapters)")
        return None
    names = s["model.lora.target_modules"]
    targets = list(dict.fromkeys(_FUSED.get(n, n) for n in names))
    renamed = [n for n in names if n in _FUSED]
    if renamed:
        kept = [n for n in names if n not in _FUSED]
        release = (f"the release adapted only {', '.join(kept)}" if kept else
                   "the release's LoRA matched nothing (peft stops on such a config: the release could not run it)")
        notes.append(f"`model.lora.target_modules`: {', '.join(renamed)} do not exist in Phi-3, so {release}; here "
                     f"they name Phi-3's fused projections: {', '.join(targets)} (the paper's LoRA on every "
                     "projection)" + (f". To train what the release trained, set `target_modules: [{', '.join(kept)}]`"
                                      if kept else ""))
    return {"r": s["model.lora.r"], "alpha": s["model.lora.alpha"], "dropout": s["model.lora.dropout"],
            "target_modules": targets}


def _model(s: dict[str, Any], train: bool, notes: list[str], run: bool) -> tuple[dict[str, Any], str]:
    prompts, token, size, side = _prompts(s, train)
    length_key = "training.max_length" if train else "eval.max_length"
    backbone = {"model_name_or_path": s["model.base_model"], "dtype": "float32", "pooling": "eos_block",
                "eos_block_size": size, "eos_token": token, "prompts": prompts, "lora": _lora(s, train, notes, run),
                "max_text_tokens": s[length_key]}
    notes.append(f"the embedding is the mean over the {size} {token} tokens (the release: the last 10 positions; "
                 "`release_compatible: true` on the backbone reproduces it exactly); "
                 f"`{length_key}` cuts the user's text only, never the template or the end block")
    if s["training.fp16"] or s["model.torch_dtype"] != "float32":
        notes.append(f"`training.fp16: {str(s['training.fp16']).lower()}` and `model.torch_dtype: "
                     f"{s['model.torch_dtype']}` are read but unused by the release, which runs in float32: so does "
                     "this run (`precision: 32-true`); `bf16-mixed` is faster on GPUs")
    model: dict[str, Any] = {"backbone": {"class_path": "cir_lightning.backbones.XGenMMBackbone",
                                          "init_args": backbone},
                             "eval_ks": list(s["eval.ks"])}
    if train:
        # peft froze the language model's own weights; the rest of xGen-MM kept `requires_grad`, and the
        # resampler (outside the vision encoder's no_grad) was trained by the release's AdamW
        if not s["model.freeze_base_model"] and "init_adapter" in backbone["lora"]:
            notes.append("`model.freeze_base_model: false` with `model.adapter_path`: the release then trains the "
                         "perceiver resampler only (peft loads the adapter frozen); this run trains the adapter's "
                         "LoRA weights (add `lora.train_parts: [resampler]` only with an adapter that holds it)")
        elif not s["model.freeze_base_model"]:
            backbone["lora"]["train_parts"] = ["resampler"]
            notes.append("`model.freeze_base_model: false`: the release then trains the perceiver resampler fully "
                         "beside LoRA (only the language model is wrapped by peft, which freezes its base weights); "
                         "so does this run: `lora.train_parts: [resampler]`")
        model.update({
            "loss": {"class_path": "cir_lightning.losses.FireLoss",
                     "init_args": {"scale": s["training.loss_scale"], "recall_ks": [1, 5],
                                   "recall_weights": [s["training.recall_loss_weight_at_1"],
                                                      s["training.recall_loss_weight_at_5"]]}},
            "optimizer": {"class_path": "torch.optim.AdamW",
                          "init_args": {"lr": s["training.learning_rate"], "weight_decay": s["training.weight_decay"]}},
            "lr_schedule": "linear", "warmup": s["training.warmup_steps"], "target_side": side})
        if side == "caption":
            notes.append("queries are aligned with the target CAPTION (`prompts.train_target`), as in the release "
                         "(`target_side: caption`; every training line needs a `target_caption`); the paper aligns "
                         "them with the target image: `target_side: image`")
    return model, side


def _trainer(s: dict[str, Any], train: bool) -> dict[str, Any]:
    out = s["training.output_dir"]
    trainer: dict[str, Any] = {
        "accelerator": "auto", "devices": 1, "precision": "32-true", "default_root_dir": out,
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": out, "name": "logs"}}}
    if train:
        every = s["training.save_every_steps"]
        checkpoint = {"save_last": True, **({"every_n_train_steps": every, "save_top_k": -1} if every else {})}
        trainer.update({"max_epochs": s["training.num_train_epochs"],
                        "accumulate_grad_batches": s["training.gradient_accumulation_steps"],
                        "log_every_n_steps": s["training.logging_steps"], "num_sanity_val_steps": 0,
                        "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                       "init_args": checkpoint}]})
    return trainer


def _needed(s: dict[str, Any], key: str, why: str) -> Any:
    if not s[key]:
        raise CIRConfigError(f"{at(s, key)} is needed {why}")
    return s[key]


def _data(s: dict[str, Any], train: bool, side: str, notes: list[str]) -> tuple[dict[str, Any], str]:
    task = s["data.task"]
    options = {"batch_size": s["training.per_device_train_batch_size"], "eval_batch_size": s["eval.batch_size"],
               "num_workers": s["data.num_workers"], "max_short_edge": s["data.max_short_edge"]}
    if task == "custom_jsonl":
        queries, gallery = s["data.query_metadata"], s["data.gallery_metadata"]
        if not train or queries or gallery:
            _needed(s, "data.query_metadata", "to evaluate (with `data.gallery_metadata`)")
            _needed(s, "data.gallery_metadata", "to evaluate (with `data.query_metadata`)")
        init = {"root": ".", "train_file": _needed(s, "data.train_metadata", "to train") if train else None,
                "val_queries_file": queries, **({"gallery_file": gallery} if gallery else {}),
                "image_root": s["data.image_root"], "exclude_reference": False, "with_captions": side == "caption",
                "unknown_exclude_ids": "warn"}
        if queries:
            kept = "" if s["eval.exclude_reference"] else ", even with `eval.exclude_reference: false`, which the release " \
                "took for: exclude nothing"
            notes.append(f"each query's `exclude_ids` leave its ranking{kept} (the release: only with "
                         "`eval.exclude_reference: true`); a query line needs a `query_id`, a gallery line "
                         "`image_id` and `image_path`")
        return {"class_path": "cir_lightning.data.JsonlCIRDataModule", "init_args": {**init, **options}}, \
            "fit" if train else "validate"
    root = _needed(s, "data.image_root", f"for `data.task: {task}` (the dataset's folder)")
    if train and s["data.train_metadata"]:
        raise CIRConfigError(f"{at(s, 'data.train_metadata')} with `data.task: {task}`: cir_lightning trains on "
                             f"{task}'s own training split; set `data.task: custom_jsonl` to train from the JSONL file")
    if train and side == "caption":  # the release's default train_target: its FashionIQ / CIRR run read JSONL
        raise CIRConfigError(f"{at(s, 'prompts.train_target')} aligns queries with the target caption, which {task}'s "
                             "training split does not have: set it to the gallery prompt (the target image, the "
                             "paper's), or train on JSONL lines with a `target_caption` (`data.task: custom_jsonl`)")
    split = s["data.split"]
    notes.append(f"`eval.ks` {list(s['eval.ks'])}: reported beside {task}'s own cut-offs (`model.eval_ks` adds "
                 "its K to a protocol's Recall, MRR and mAP)")
    if task == "fashioniq":
        dress = s["data.dress_type"]
        if dress is not None and dress not in _CATEGORIES:
            raise CIRConfigError(f"{at(s, 'data.dress_type')} must be one of {', '.join(_CATEGORIES)}, got {dress!r}")
        if split not in ("val", "test"):
            raise CIRConfigError(f"{at(s, 'data.split')} must be val or test for FashionIQ, got {split!r}")
        if split == "test" and not train:
            notes.append("FashionIQ `split: test` has no public targets (the release read it anyway): the val "
                         "split is evaluated, as every paper does")
        notes.append("FashionIQ: each query's text is \"C0 and c1\" (the first caption `capitalize()`d, as in "
                     "CLIP4Cir; the release: lower case) and the gallery is the category's whole val split")
        if s["eval.exclude_reference"]:
            notes.append("`eval.exclude_reference: true` removes each query's reference from its ranking, as in "
                         "the release; the official protocol keeps it (`exclude_reference: false`)")
        init = {"root": root, "image_root": root, "categories": [dress] if dress else _CATEGORIES,
                "exclude_reference": s["eval.exclude_reference"]}
        return {"class_path": "cir_lightning.data.FashionIQDataModule", "init_args": {**init, **options}}, \
            "fit" if train else "validate"
    if split not in ("val", "test1", "test"):
        raise CIRConfigError(f"{at(s, 'data.split')} must be val or test1 for CIRR, got {split!r}")
    notes.append("CIRR: only each query's reference leaves its ranking, whatever `eval.exclude_reference` (the release "
                 "removed its whole image set, which holds the target: recall near 0; with `false`, nothing), and "
                 "Recall_subset is measured within the set; each query's "
                 "text is its caption as written (the release strips '.', '?', ',' and spaces from both ends)")
    if split != "val" and not train:
        notes.append("CIRR test1 has no public targets: `test` writes the evaluation server's two files instead")
    init = {"root": str(Path(root) / "cirr"), "image_root": root}
    return {"class_path": "cir_lightning.data.CIRRDataModule", "init_args": {**init, **options}}, \
        "fit" if train else ("validate" if split == "val" else "test")


def translate(s: dict[str, Any], train: bool, run: bool = False) -> tuple[dict[str, Any], str, list[str]]:
    """The LightningCLI config, its subcommand and the notes for the release settings ``s`` (dotted keys,
    plus ``_file`` and ``_lines`` for messages) of a training (``train``) or an evaluation run; ``run``: it
    starts now, so ``model.adapter_path`` must exist (a conversion may precede the training that writes it).

    Example:
        >>> from cir_lightning.fire_config import RELEASE_DEFAULTS
        >>> from cir_lightning.fire_mapping import translate
        >>> settings = {**RELEASE_DEFAULTS, "data.train_metadata": "train.jsonl", "_file": "f.yaml", "_lines": {}}
        >>> config, subcommand, notes = translate(settings, train=True)
        >>> subcommand, config["model"]["target_side"], config["model"]["backbone"]["init_args"]["lora"]["r"]
        ('fit', 'caption', 64)
    """
    notes: list[str] = []
    model, side = _model(s, train, notes, run)
    data, subcommand = _data(s, train, side, notes)
    config = {"seed_everything": s["seed"], "trainer": _trainer(s, train), "model": model, "data": data}
    return config, subcommand, notes + unused_note(s, train)
