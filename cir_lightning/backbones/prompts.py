"""Prompt templates as data: presets selectable by name, any field overridable from config.

A template holds ``<image>`` where the image goes (replaced by the processor's own image token) and
``{modification}`` / ``{text}`` where the text goes. The embedding block (``eos_block_size`` copies of
the EOS token, FiRE's M = 5) is appended by the collator, not written into templates.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace

from cir_lightning.errors import CIRConfigError

IMAGE = "<image>"


@dataclass(frozen=True)
class PromptTemplates:
    """The three templates of a backbone.

    Args:
        query: reference image + modification; must contain ``<image>`` and ``{modification}``.
        gallery: a gallery (or target) image; must contain ``<image>``.
        text: a text-only item such as a target caption; must contain ``{text}``.
    """

    query: str
    gallery: str
    text: str = "{text} ."

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
        if problems:
            raise CIRConfigError("bad prompt template(s): " + "; ".join(problems))
        return self


PRESETS: dict[str, PromptTemplates] = {
    # FiRE's public release (the paper words the query "... but <modification>, please describe ...").
    "fire": PromptTemplates(
        query="Given the reference image <image> but modify it with: {modification}. Describe the new image ?",
        gallery="Describe the image <image> ?",
        text="{text} .",
    ),
    # Minimal prompts: fewer tokens around the image, for quick experiments with tiny models.
    "short": PromptTemplates(query="<image> {modification}", gallery="<image>", text="{text}"),
}


@dataclass
class Prompts:
    """Which prompts a backbone uses: a preset, with any of its templates replaced.

    Args:
        preset: name of a preset in ``PRESETS`` ("fire", "short").
        query: replaces the preset's query template.
        gallery: replaces the preset's gallery template.
        text: replaces the preset's text template.

    Example:
        >>> Prompts("fire", gallery="<image>").resolve().gallery
        '<image>'
        >>> Prompts("nope").resolve()
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRConfigError: unknown prompt preset 'nope'; known: fire, short
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
