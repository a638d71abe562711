"""Prompt templates as data: presets selectable by name, any field overridable from config.

A template holds ``<image>`` where the image goes (replaced by the processor's own image token) and
``{modification}`` / ``{text}`` where the text goes. The embedding block (``eos_block_size`` copies of
the EOS token, FiRE's M = 5) is appended by the collator, not written into templates.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from cir_lightning.backbones.pooling import PoolingMethod
from cir_lightning.errors import CIRConfigError

IMAGE = "<image>"
ADDED_FIELDS = ("per_subset", "text_positions", "image_pixels", "pre_resize", "resize_to", "combine_texts")
"""``PromptTemplates`` fields added after fingerprints were first written (left out of them while unset)."""


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
        per_subset: evaluation subset name -> the preset whose templates that subset's queries and gallery
            use instead (E5-V words its FashionIQ prompts per category); it must pool as these do.
        text_positions: give every row plain 1-D positions (0, 1, 2, ... over its real tokens), also rows
            with images, instead of the model's multimodal RoPE index (Qwen2-VL's 3-D M-RoPE). LamRA's
            model runs its language model without that index, so its checkpoints were trained and are
            evaluated with 1-D positions.
        image_pixels: ``(min, max)`` pixels the Qwen2-VL-family image processor resizes every image into
            (GME: 256 and 1280 tokens of 28 x 28 pixels); ``None``: the checkpoint's processor limits.
        pre_resize: convert images to RGB (alpha dropped) and resize them to multiples of this many pixels
            (``fit_to_factor``) before the processor, as GME's ``fetch_image`` does (28); ``None``: images
            go to the processor as they are.
        resize_to: resize every image to this ``(width, height)`` with PIL's default filter, in its own mode,
            then convert it to RGB (alpha dropped), before the processor, as BGE-VL-MLLM's ``data_process``
            does (512 x 512); ``None``: images go to the processor as they are.
        combine_texts: how a query with several texts (FashionIQ's two caption orders) becomes one
            embedding: ``normalized`` (the mean of the normalised embeddings, renormalised; SEARLE) or
            ``raw`` (the sum of the pooled hidden states, then normalised; E5-V's ``retrieval.py``).

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
    per_subset: dict[str, str] | None = None
    text_positions: bool = False
    image_pixels: tuple[int, int] | None = None
    pre_resize: int | None = None
    resize_to: tuple[int, int] | None = None
    combine_texts: Literal["normalized", "raw"] = "normalized"

    def fingerprint(self, omit_unset: Sequence[str] = ADDED_FIELDS) -> dict[str, Any]:
        """The fields, for fingerprints; those in ``omit_unset`` only off their defaults (older caches still match).

        Example:
            >>> from cir_lightning.backbones import Prompts
            >>> sorted(Prompts("gme").resolve().fingerprint())[-4:]
            ['pre_resize', 'query', 'text', 'text_positions']
            >>> "per_subset" in Prompts("fire").resolve().fingerprint()
            False
        """
        defaults = {f.name: f.default for f in fields(self)}
        return {k: v for k, v in vars(self).items() if k not in omit_unset or v != defaults[k]}

    def for_subset(self, name: str) -> PromptTemplates:
        """The templates of evaluation subset ``name`` (these unless ``per_subset`` names a preset for it).

        Example:
            >>> from cir_lightning.backbones import Prompts
            >>> t = Prompts("e5v_fashioniq_dress", per_subset={"toptee": "e5v_fashioniq_shirt"}).resolve()
            >>> "this shirt" in t.for_subset("toptee").query, "this dress" in t.for_subset("dress").query
            (True, True)
        """
        return PRESETS[self.per_subset[name]] if self.per_subset and name in self.per_subset else self

    def check(self) -> PromptTemplates:
        problems = []
        for subset, preset in (self.per_subset or {}).items():
            other = PRESETS.get(preset)
            if other is None:
                problems.append(f"`per_subset` names unknown preset {preset!r} for {subset!r}; known: {', '.join(PRESETS)}")
            elif (other.pooling, other.eos_block_size, other.marker, other.combine_texts) != \
                    (self.pooling, self.eos_block_size, self.marker, self.combine_texts):
                problems.append(f"`per_subset` preset {preset!r} for {subset!r} pools otherwise ({other.pooling}, "
                                f"EOS block {other.eos_block_size}) than the main templates ({self.pooling}, EOS "
                                f"block {self.eos_block_size}); one backbone pools one way")
        if self.image_pixels is not None and not (len(self.image_pixels) == 2
                                                  and 0 < self.image_pixels[0] <= self.image_pixels[1]):
            problems.append(f"`image_pixels` must be (min, max) with 0 < min <= max: {self.image_pixels!r}")
        if self.pre_resize is not None and self.pre_resize < 1:
            problems.append(f"`pre_resize` must be a positive number of pixels: {self.pre_resize!r}")
        if self.resize_to is not None and not (len(self.resize_to) == 2 and min(self.resize_to) >= 1):
            problems.append(f"`resize_to` must be (width, height) in pixels: {self.resize_to!r}")
        allowed = {"query": {"modification"}, "gallery": set(), "text": {"text"}}
        for name, names in allowed.items():
            template = getattr(self, name)
            try:
                used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            except ValueError as err:
                problems.append(f"`{name}` is not a valid template ({err}); write literal braces as {{{{ }}}}")
                continue
            if used - names:
                problems.append(f"`{name}` uses unknown field(s) {sorted(used - names)}; it may use "
                                f"{sorted(names) or 'none'}: {template!r}")
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
_VLM2VEC_GALLERY = "<image>\nRepresent the given image."  # no "\n" after it, unlike the queries (MMEB)
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
        text=_E5V_TEXT, pooling="last_token", eos_block_size=0, combine_texts="raw")


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
    # VLM2Vec (MMEB's CIRR / FashionIQ instructions): no chat template, last token, no EOS appended. Its
    # Qwen2-VL (VLM2Vec-V2.0, VLM2Vec-Qwen2VL) finds images by <|vision_start|>, which its prompts lack:
    # 1-D positions, as it was trained (tests/backbones/test_golden_vlm2vec.py).
    "vlm2vec_cirr": PromptTemplates(
        query="<image>\nGiven an image, find a similar everyday image with the described changes: {modification}\n",
        gallery=_VLM2VEC_GALLERY, text="{text}\n", pooling="last_token", eos_block_size=0, text_positions=True),
    "vlm2vec_fashioniq": PromptTemplates(
        query="<image>\nFind an image to match the fashion image and style note: {modification}\n",
        gallery=_VLM2VEC_GALLERY, text="{text}\n", pooling="last_token", eos_block_size=0, text_positions=True),
    # BGE-VL-MLLM (BAAI/BGE-VL-MLLM-S1/S2, LLaVA-NeXT Mistral; the hub's modeling_llavanext_for_embedding.py):
    # prepare_text_input's prompts (the image after the text), data_process's 512 x 512 resize of every
    # image, last token. Proven against that code by tests/backbones/test_golden_bgevl_mllm.py.
    "bge_vl": PromptTemplates(
        query=f"[INST] \n <instruct> {_BGE_VL_INSTRUCTION} <query>  {{modification}} \n <image> [/INST]",
        gallery="[INST]  <image> [/INST]", text="[INST]  {text} \n [/INST]",
        pooling="last_token", eos_block_size=0, resize_to=(512, 512)),
    # LamRA (Code-kunkun/LamRA, Qwen2-VL): "summarize in one word" user turns, assistant turn "<emb>.";
    # the embedding is the hidden state just before the first <emb>. The composed query is LamRA's
    # zero-shot CIRCO text (eval/eval_zeroshot/eval_circo.py, dataset/datasets_circo.py; the repository has
    # no CIRR script). Positions are 1-D: LamRA's forward calls the language model without M-RoPE's index.
    # Images: process_vision_info's 4 to 300 squares of 28 x 28 pixels (collators/qwen2_vision_process.py).
    # Proven against LamRA's own code by tests/backbones/test_golden_lamra.py.
    "lamra": PromptTemplates(
        query=_lamra(f"{_QWEN_IMAGE}I'm looking for a similar everyday image with the described changes. "
                     "{modification}\nSummarize above image and sentence in one word: "),
        gallery=_lamra(f"{_QWEN_IMAGE}\nSummarize above image in one word: "),
        text=_lamra("{text}\nSummarize above sentence in one word: "),
        pooling="before_marker", eos_block_size=0, marker="<emb>", text_positions=True,
        image_pixels=(4 * 28 * 28, 300 * 28 * 28)),
    # GME (Alibaba-NLP/gme-Qwen2-VL-2B-Instruct gme_inference.py): instruction as the system turn, image
    # then text in the user turn, "<|endoftext|>" after the assistant header; last token.
    "gme": PromptTemplates(
        query=_gme(_GME_CIR, f"{_QWEN_IMAGE}{{modification}}"),
        gallery=_gme(_GME_DEFAULT, _QWEN_IMAGE),
        text=_gme(_GME_DEFAULT, "{text}"),
        # GmeQwen2VL: fetch_image's RGB + resize to multiples of 28, then the processor with its
        # min/max_image_tokens 256 / 1280; the decoder called without position ids (1-D positions)
        pooling="last_token", eos_block_size=0, image_pixels=(256 * 28 * 28, 1280 * 28 * 28), pre_resize=28,
        text_positions=True),
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
        per_subset: evaluation subset -> preset for its queries and gallery, e.g. E5-V on FashionIQ:
            ``{"shirt": "e5v_fashioniq_shirt", "toptee": "e5v_fashioniq_shirt"}`` with preset
            ``e5v_fashioniq_dress``. Training batches always use the main templates.

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
    per_subset: dict[str, str] | None = None

    def resolve(self) -> PromptTemplates:
        if self.preset not in PRESETS:
            raise CIRConfigError(f"unknown prompt preset {self.preset!r}; known: {', '.join(PRESETS)}")
        overrides = {k: v for k, v in (("query", self.query), ("gallery", self.gallery), ("text", self.text))
                     if v is not None}
        if self.per_subset:
            overrides["per_subset"] = dict(self.per_subset)
        return replace(PRESETS[self.preset], **overrides).check()
