"""Prompt templates as data: presets selectable by name, any field overridable from config.

A template holds ``<image>`` where the image goes (replaced by the processor's own image token) and
``{modification}`` / ``{text}`` where the text goes. The embedding block (``eos_block_size`` copies of
the EOS token, FiRE's M = 5) is appended by the collator, not written into templates.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace

from cir_lightning.backbones.pooling import PoolingMethod
from cir_lightning.errors import CIRConfigError

IMAGE = "<image>"


@dataclass(frozen=True)
class PromptTemplates:
    """The three templates of a backbone.

    Args:
        query: reference image + modification; must contain ``<image>`` and ``{modification}``.
        gallery: a gallery (or target) image; must contain ``<image>``.
        text: a text-only item such as a target caption; must contain ``{text}``.
        pooling: how the model that uses these prompts pools (the preset's published rule).
        eos_block_size: EOS tokens the collator appends and ``eos_block`` pooling averages (0: none).
        marker: the token whose predecessor ``before_marker`` pooling reads (LamRA: ``<emb>``); every
            template must contain it.

    Example:
        >>> from cir_lightning.backbones import PromptTemplates
        >>> t = PromptTemplates(query="<image> {modification}", gallery="<image>").check()
        >>> t.query.format(modification="make it red"), t.text.format(text="a red dress"), t.pooling
        ('<image> make it red', 'a red dress .', 'eos_block')
        >>> PromptTemplates(query="{modification}", gallery="<image>").check()
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: bad prompt template(s): `query` needs <image> and {modification}: ...
    """

    query: str
    gallery: str
    text: str = "{text} ."
    pooling: PoolingMethod = "eos_block"
    eos_block_size: int = 5
    marker: str | None = None

    def check(self) -> PromptTemplates:
        problems = []
        allowed = {"query": {"modification"}, "gallery": set(), "text": {"text"}}
        for name, fields in allowed.items():
            template = getattr(self, name)
            try:
                used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            except ValueError as err:
                problems.append(f"`{name}` is not a valid template ({err}); write literal braces as {{{{ }}}}")
                continue
            if used - fields:
                problems.append(f"`{name}` uses unknown field(s) {sorted(used - fields)}; it may use "
                                f"{sorted(fields) or 'none'}: {template!r}")
        if IMAGE not in self.query or "{modification}" not in self.query:
            problems.append(f"`query` needs {IMAGE} and {{modification}}: {self.query!r}")
        if IMAGE not in self.gallery:
            problems.append(f"`gallery` needs {IMAGE}: {self.gallery!r}")
        if "{text}" not in self.text:
            problems.append(f"`text` needs {{text}}: {self.text!r}")
        if self.pooling == "before_marker":
            if not self.marker:
                problems.append("`pooling: before_marker` needs a `marker` token")
            else:
                problems += [f"`{name}` lacks the marker {self.marker!r} that `before_marker` pooling reads"
                             for name in allowed if self.marker not in getattr(self, name)]
        if problems:
            raise CIRConfigError("bad prompt template(s): " + "; ".join(problems))
        return self


_LLAMA3 = "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n \n"
_E5V_TEXT = _LLAMA3.format("{text}\nSummary above sentence in one word: ")
_VLM2VEC_GALLERY = "<image>\nRepresent the given image.\n"
_BGE_VL_INSTRUCTION = ("Retrieve the target image that best meets the combined criteria by using both the provided "
                       "image and the image retrieval instructions: ")


# Qwen2-VL chat format: the processor expands <|image_pad|> (our <image>) but does not add the vision
# delimiters, so templates write them around it as Qwen2-VL's chat template renders an image item.
_QWEN_IMAGE = "<|vision_start|><image><|vision_end|>"
_QWEN_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def _lamra(user: str) -> str:
    # the user turn, the assistant turn "<emb>." and the generation prompt, as LamRA renders them with
    # Qwen2-VL's chat template (add_generation_prompt=True)
    return (f"{_QWEN_SYSTEM}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n<emb>.<|im_end|>\n"
            "<|im_start|>assistant\n")


def _gme(instruction: str, content: str) -> str:
    return (f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n"
            "<|im_start|>assistant\n<|endoftext|>")


_GME_DEFAULT = "You are a helpful assistant."
_GME_CIR = "Retrieve a day-to-day image that aligns with the modification instructions of the provided image."


def _e5v_fashioniq(category: str) -> PromptTemplates:
    return PromptTemplates(
        query=_LLAMA3.format(f"<image> change the style of this {category} to {{modification}}\n Desribe this "
                             f"modified {category} in one word based on its style:"),
        gallery=_LLAMA3.format(f"<image>\n Describe this {category} in one word based on its style:"),
        text=_E5V_TEXT, pooling="last_token", eos_block_size=0)


PRESETS: dict[str, PromptTemplates] = {
    # FiRE's public release (the paper words the query "... but <modification>, please describe ...").
    "fire": PromptTemplates(
        query="Given the reference image <image> but modify it with: {modification}. Describe the new image ?",
        gallery="Describe the image <image> ?",
        text="{text} .",
    ),
    # Minimal prompts: fewer tokens around the image, for quick experiments with tiny models.
    "short": PromptTemplates(query="<image> {modification}", gallery="<image>", text="{text}"),
    # E5-V (royokong/e5-v; kongds/E5-V README): Llama-3 chat turn, last token of the whole prompt. The
    # composed query is the image+text prompt of VLM2Vec's E5-V baseline.
    "e5v": PromptTemplates(
        query=_LLAMA3.format("<image>\n{modification}\nSummary above image and text in one word: "),
        gallery=_LLAMA3.format("<image>\nSummary above image in one word: "),
        text=_E5V_TEXT, pooling="last_token", eos_block_size=0),
    # E5-V's own CIRR evaluation (kongds/E5-V retrieval.py; "desribe" is the original's spelling).
    "e5v_cirr": PromptTemplates(
        query=_LLAMA3.format('<image>Modify this image with "{modification}", desribe modified image in one word:'),
        gallery=_LLAMA3.format("<image>\n Describe this image in one word:"),
        text=_E5V_TEXT, pooling="last_token", eos_block_size=0),
    # E5-V's FashionIQ evaluation: the category is in the prompt (toptee uses "shirt").
    "e5v_fashioniq_dress": _e5v_fashioniq("dress"),
    "e5v_fashioniq_shirt": _e5v_fashioniq("shirt"),
    # VLM2Vec (MMEB's CIRR / FashionIQ instructions): no chat template, last token, no EOS appended.
    "vlm2vec_cirr": PromptTemplates(
        query="<image>\nGiven an image, find a similar everyday image with the described changes: {modification}\n",
        gallery=_VLM2VEC_GALLERY, text="{text}\n", pooling="last_token", eos_block_size=0),
    "vlm2vec_fashioniq": PromptTemplates(
        query="<image>\nFind an image to match the fashion image and style note: {modification}\n",
        gallery=_VLM2VEC_GALLERY, text="{text}\n", pooling="last_token", eos_block_size=0),
    # BGE-VL-MLLM (BAAI/BGE-VL-MLLM-S1/S2, LLaVA-NeXT Mistral): the image after the text, last token.
    "bge_vl": PromptTemplates(
        query=f"[INST] \n <instruct> {_BGE_VL_INSTRUCTION} <query>  {{modification}} \n <image> [/INST]",
        gallery="[INST]  <image> [/INST]", text="[INST]  {text} \n [/INST]",
        pooling="last_token", eos_block_size=0),
    # LamRA (Code-kunkun/LamRA, Qwen2-VL): "summarize in one word" user turns, assistant turn "<emb>.";
    # the embedding is the hidden state just before the first <emb>. The composed query is LamRA's
    # zero-shot CIRR / CIRCO text.
    "lamra": PromptTemplates(
        query=_lamra(f"{_QWEN_IMAGE}I'm looking for a similar everyday image with the described changes. "
                     "{modification}\nSummarize above image and sentence in one word: "),
        gallery=_lamra(f"{_QWEN_IMAGE}\nSummarize above image in one word: "),
        text=_lamra("{text}\nSummarize above sentence in one word: "),
        pooling="before_marker", eos_block_size=0, marker="<emb>"),
    # GME (Alibaba-NLP/gme-Qwen2-VL-2B-Instruct gme_inference.py): instruction as the system turn, image
    # then text in the user turn, "<|endoftext|>" after the assistant header; last token.
    "gme": PromptTemplates(
        query=_gme(_GME_CIR, f"{_QWEN_IMAGE}{{modification}}"),
        gallery=_gme(_GME_DEFAULT, _QWEN_IMAGE),
        text=_gme(_GME_DEFAULT, "{text}"),
        pooling="last_token", eos_block_size=0),
}
"""Prompt presets by name; each records the pooling its model was trained with (sources in comments)."""


def list_presets() -> list[str]:
    """The names of the prompt presets (``PRESETS``), for ``Prompts(preset=...)``.

    Example:
        >>> from cir_lightning.backbones import list_presets
        >>> list_presets()[:4]
        ['fire', 'short', 'e5v', 'e5v_cirr']
        >>> "lamra" in list_presets()
        True
    """
    return list(PRESETS)


@dataclass
class Prompts:
    """Which prompts a backbone uses: a preset, with any of its templates replaced.

    Args:
        preset: name of a preset in ``PRESETS`` ("fire", "short", "e5v", "e5v_cirr", "vlm2vec_cirr",
            "bge_vl", "lamra", "gme", ...; see ``list_presets``).
        query: replaces the preset's query template.
        gallery: replaces the preset's gallery template.
        text: replaces the preset's text template.

    Example:
        >>> from cir_lightning.backbones import Prompts
        >>> Prompts("fire", gallery="<image>").resolve().gallery
        '<image>'
        >>> Prompts("nope").resolve()
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: unknown prompt preset 'nope'; known: fire, short, e5v, ...
    """

    preset: str = "fire"
    query: str | None = None
    gallery: str | None = None
    text: str | None = None

    def resolve(self) -> PromptTemplates:
        if self.preset not in PRESETS:
            raise CIRConfigError(f"unknown prompt preset {self.preset!r}; known: {', '.join(PRESETS)}")
        overrides = {k: v for k, v in (("query", self.query), ("gallery", self.gallery), ("text", self.text))
                     if v is not None}
        return replace(PRESETS[self.preset], **overrides).check()
