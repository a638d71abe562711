"""What a ``Backbone`` subclass must implement, declared once, and the check that names what one lacks.

``Backbone`` marks the members a subclass must implement (``abc.abstractmethod``, without making the class
abstract, so that a base ``Backbone`` still serves its doctests); ``check_backbone``, which ``CIRModule``
calls when it is built, refuses a backbone that lacks any of them, naming each with what it is for, before
any model is set up, instead of a bare ``NotImplementedError`` or ``AttributeError`` from deep inside a run.
"""

from __future__ import annotations

from typing import Any

from cir_lightning.errors import CIRModelError

BACKBONE_PARTS: dict[str, str] = {
    "forward": "`forward(inputs)`: the collator's inputs -> (batch, embedding_dim) L2-normalised float32 "
               "embeddings",
    "embedding_dim": "`embedding_dim` (a property): the size of those embeddings, known before anything is embedded",
    "fingerprint": "`fingerprint()`: a JSON-able dict identifying the base model and how it embeds, its "
                   "`base_digest` included (checkpoints, caches and results compare it)",
    "collator": "`collator` (set in `__init__`): a picklable `SampleBatches` subclass turning samples into the "
                "inputs `forward` takes",
}
"""The members every backbone implements -> what each is for (the text of ``check_backbone``'s message)."""


def unimplemented(backbone: Any, member: str) -> CIRModelError:
    """The error of a ``Backbone`` member that ``type(backbone)`` does not implement.

    Example:
        >>> from cir_lightning.backbones.contract import unimplemented
        >>> str(unimplemented(object(), "embedding_dim"))  # doctest: +ELLIPSIS
        'object does not implement `embedding_dim` (a property): the size of those embeddings, ...'
    """
    return CIRModelError(f"{type(backbone).__name__} does not implement {BACKBONE_PARTS[member]}; a Backbone subclass "
                         "must (see `cir_lightning.backbones.Backbone`)")


def check_backbone(backbone: Any) -> None:
    """Refuse a backbone that does not implement all of ``BACKBONE_PARTS``, naming every part it lacks.

    Example:
        >>> from cir_lightning.backbones import Backbone
        >>> from cir_lightning.backbones.contract import check_backbone
        >>> class Half(Backbone):
        ...     def forward(self, inputs):
        ...         return inputs["x"]
        >>> check_backbone(Half())
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRModelError: Half does not implement what a Backbone must: `embedding_dim` (a property)...
    """
    kind = type(backbone)
    members = {name: getattr(kind, name, None) for name in ("forward", "embedding_dim", "fingerprint")}
    lacking = [name for name, member in members.items()
               if member is None or getattr(member, "__isabstractmethod__", False)]
    # an instance attribute (set in __init__), so asked of the backbone, not its class; only that it is there:
    # what a collator is, the Protocol data.contract.Collator, is a layer above (backbones do not import data),
    # and CIRDataModule.connect checks it, naming what the collator lacks, before any loader runs it
    if not hasattr(backbone, "collator"):
        lacking.append("collator")
    if lacking:
        raise CIRModelError(f"{kind.__name__} does not implement what a Backbone must: "
                            f"{'; '.join(BACKBONE_PARTS[name] for name in lacking)} "
                            "(see `cir_lightning.backbones.Backbone`)")
