"""Write the E5-V golden (``tests/goldens/e5v``) by running E5-V's OWN evaluation code (kongds/E5-V).

Runs in a side virtual environment with the transformers E5-V pins (``requirements.txt``: 4.41.2, with
accelerate 0.27.2 and peft 0.11.1, which ``retrieval.py`` imports), e.g. ``/work/venvs/e5v``:

    /work/venvs/e5v/bin/python scripts/goldens/make_e5v.py --original /work/originals/e5v \\
        --commit $(git --git-dir=/work/.mirror/kongds+E5-V/repo rev-parse HEAD)

``--original`` is a checkout of kongds/E5-V; nothing of it is copied here. Its ``retrieval.py`` is loaded
from there and its ``main`` runs as ``retrieval.py --use_e5v`` runs it: ``main`` writes the prompts,
``init_model_and_transform`` loads ``LlavaNextProcessor`` + ``LlavaNextForConditionalGeneration``, and
``ir`` / ``emb_data`` / ``cir`` embed (``processor(prompts, images, padding=True)``,
``hidden_states[-1][:, -1, :]``, ``F.normalize``). Around it (``Harness``): hub names load the tiny folder,
``datasets.load_dataset`` returns the shared inputs, ``accelerator.gather`` records each batch. A second
run (``fixed_*``: images as RGB, transformers 4.41.2's two LLaVA-NeXT bugs fixed as later releases fixed
them, ``upstream_fixes``) lets the test show that these, and only these, separate our backbone from it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "goldens"))
import recipe  # noqa: E402

SEED = 20240717
REPOSITORY = "https://github.com/kongds/E5-V"
FILES = ["retrieval.py", "README.md", "requirements.txt"]
PACKAGES = ["torch", "transformers", "tokenizers", "accelerate", "peft", "numpy", "pillow", "safetensors"]
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<image>", "<pad>"]
# Llama-3's pre-tokenizer split (tokenizer.json of meta-llama/Meta-Llama-3-8B-Instruct)
PRETOKENIZE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                     r"\s*[\r\n]+|\s+(?!\S)|\s+")
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
CROP, PATCH = 16, 4  # the vision tower's crop and patch: 4 x 4 patches a crop
PINPOINTS = [[16, 32], [32, 16], [32, 32], [16, 48], [48, 16]]  # anyres grids of 1 x 2 ... 3 x 1 crops
# the `e5v` preset's composed query (VLM2Vec's E5-V baseline; E5-V has none), run through E5-V's `cir`
GENERIC_QUERY = "<image>\n<sent>\nSummary above image and text in one word: "
GALLERY_SIZE = 50  # `cir` reports Recall@50 on FashionIQ: the shared images, then copies of them
CATEGORIES = ("dress", "shirt")


def tiny_tokenizer() -> Any:
    """Llama-3's tokenizer pipeline (split regex, byte-level BPE, ``<|begin_of_text|>`` first), a tiny vocabulary
    trained on the prompt words, Llama-3's chat tokens, ``<image>``, ``<pad>``; left padding."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    texts = recipe.load_texts()
    corpus = texts["modifications"] + texts["captions"] + [
        "user assistant Summary above image sentence and text in one word:",
        "Describe this image dress shirt in one word based on its style: change the style of this to",
        'Modify this image with "", desribe modified image in one word: Desribe this modified'] * 4
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=LLAMA3_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<pad>", padding_side="left", model_max_length=4096,
                                   model_input_names=["input_ids", "attention_mask"])


def build_checkpoint(folder: Path) -> None:
    """A tiny LLaVA-NeXT (CLIP vision tower, anyres grids, MLP projector, Llama-3-style decoder with GQA)
    with E5-V's layout, saved by this transformers' ``save_pretrained``."""
    import transformers as tf

    tokenizer = tiny_tokenizer()
    vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, image_size=CROP, patch_size=PATCH, projection_dim=32)
    text = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                          rope_theta=500000.0, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = tf.LlavaNextConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                                image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                                image_grid_pinpoints=PINPOINTS, vision_feature_layer=-2,
                                vision_feature_select_strategy="default", tie_word_embeddings=False)
    torch.manual_seed(0)
    model = tf.LlavaNextForConditionalGeneration(config)
    image_processor = tf.LlavaNextImageProcessor(
        size={"shortest_edge": CROP}, crop_size={"height": CROP, "width": CROP}, image_grid_pinpoints=PINPOINTS,
        image_mean=CLIP_MEAN, image_std=CLIP_STD)
    tf.LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder, safe_serialization=True)


class FakeDataset(list):
    """Rows of the shared inputs with the few ``datasets.Dataset`` methods ``ir`` / ``cir`` call."""

    def __getitem__(self, key: Any) -> Any:
        return [row[key] for row in self] if isinstance(key, str) else super().__getitem__(key)

    def rename_column(self, old: str, new: str) -> FakeDataset:
        return FakeDataset({(new if k == old else k): v for k, v in row.items()} for row in self)

    def filter(self, keep: Any, num_proc: int | None = None) -> FakeDataset:
        return FakeDataset(row for row in self if keep(row))

    def add_column(self, name: str, values: list[Any]) -> FakeDataset:
        return FakeDataset({**row, name: value} for row, value in zip(self, values, strict=True))


class Proxy:
    """``target`` with attributes replaced: ``Proxy(x, gather=f)`` is ``x`` whose ``gather`` is ``f``."""

    def __init__(self, target: Any, **attributes: Any) -> None:
        self.__dict__.update(attributes, target=target)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__.get("call", self.target)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


class Harness:
    """Runs ``retrieval.main`` offline on the shared inputs; ``log``: one ``(texts given to the processor,
    embeddings gathered)`` pair per batch, in order."""

    def __init__(self, original: Path, checkpoint: Path) -> None:
        self.checkpoint, self.log, self.asked = str(checkpoint), [], []
        shim = sys.modules.setdefault("datasets", types.ModuleType("datasets"))  # only its loaders are used
        shim.load_dataset, shim.load_from_disk, shim.disable_caching = self.load_dataset, None, lambda: None
        sys.path.insert(0, str(original))
        spec = importlib.util.spec_from_file_location("e5v_retrieval", original / "retrieval.py")
        self.module = mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        self.real_init = mod.init_model_and_transform
        mod.init_model_and_transform = self.init_model_and_transform
        for name in ("LlavaNextProcessor", "LlavaNextForConditionalGeneration", "AutoTokenizer"):
            setattr(mod, name, self.redirect(getattr(mod, name)))
        mod.accelerator = Proxy(mod.accelerator, gather=self.gather)
        images, texts = recipe.load_images(), recipe.load_texts()
        self.images = [images[i % len(images)] for i in range(GALLERY_SIZE)]
        self.mods, self.captions = texts["modifications"], texts["captions"]

    def redirect(self, cls: Any) -> Any:
        """``cls`` whose ``from_pretrained(hub name, ...)`` loads the tiny folder (the name is recorded)."""
        harness = self

        class Redirected(cls):
            @classmethod
            def from_pretrained(cls_, name, *args, **kwargs):
                harness.asked.append(name)
                kwargs.pop("revision", None)
                return cls.from_pretrained(harness.checkpoint, *args, **kwargs)

        Redirected.__name__ = cls.__name__
        return Redirected

    def init_model_and_transform(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        model, transform = self.real_init(*args, **kwargs)
        # E5-V's <image> id (128256) is written over the config after loading; the tiny vocabulary puts it
        # at the id its own config holds (the real royokong/e5-v config holds 128256 too)
        assert model.config.image_token_index == 128256
        model.config.image_token_index = transform.tokenizer.convert_tokens_to_ids("<image>")

        def process(texts: Any, *args: Any, **kwargs: Any) -> Any:
            self.texts = list(texts)
            return transform(texts, *args, **kwargs)

        return model, Proxy(transform, call=process)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        self.log.append((self.texts, tensor.detach().clone()))
        return tensor

    def load_dataset(self, name: str, split: str | None = None) -> Any:
        n = len(self.mods)
        ids = [f"img{i}" for i in range(GALLERY_SIZE)]
        if name.endswith("flickr30k_test"):  # ir(): 5 captions an image, Recall@10 over >= 10 images
            return FakeDataset([{"image": image, "text": list(self.captions)} for image in self.images[:2 * n]])
        categories = CATEGORIES if "fashioniq" in name else ("",)
        if name.endswith("_imgs"):
            return {"val": FakeDataset({"id": ids[i], "img": image, "category": c}
                                       for i, image in enumerate(self.images) for c in categories)}
        queries = [{"candidate": self.images[i], "candidate_id": ids[i], "target_id": ids[(i + 1) % n],
                    "caption": [self.mods[i], self.captions[i]] if "fashioniq" in name else self.mods[i], "category": c}
                   for c in categories for i in range(n)]
        return {"val": FakeDataset(queries)}

    def run(self, data: str, **kwargs: Any) -> list[tuple[list[str], torch.Tensor]]:
        """``retrieval.main(use_e5v=True, fp32=True, batch_size=5, data=...)``; the batches it embedded."""
        self.log = []
        self.module.main(use_e5v=True, fp32=True, batch_size=len(self.mods), data=data, **kwargs)
        return self.log


def collect(harness: Harness, n: int) -> dict[str, Any]:
    """Every embedding the golden keeps (and the prompts they came from), from E5-V's own code."""
    arrays: dict[str, Any] = {}
    torch.manual_seed(0)
    log = harness.run("flickr30k")  # text batches of 15 captions, then the image batches
    arrays["text"], arrays["text_prompts"] = log[0][1][:n], np.array(log[0][0][:n])
    gallery = [entry for entry in log if "<image>" in entry[0][0]]
    arrays["gallery_e5v"], arrays["gallery_e5v_prompts"] = gallery[0][1][:n], np.array(gallery[0][0][:n])
    for data, key in [("cirr", "e5v_cirr"), ("fashioniq dress", "e5v_fashioniq_dress"),
                      ("fashioniq shirt", "e5v_fashioniq_shirt")]:
        log = harness.run(data)  # the gallery batches, then the query batch
        (gallery_texts, gallery_embs), (query_texts, query_embs) = log[0], log[-1]
        arrays[f"gallery_{key}"], arrays[f"gallery_{key}_prompts"] = gallery_embs, np.array(gallery_texts)
        arrays[f"query_{key}"], arrays[f"query_{key}_prompts"] = query_embs, np.array(query_texts)  # 2n: FIQ
    # the `e5v` preset's composed query, through E5-V's own `cir` (see GENERIC_QUERY)
    harness.log, mod = [], harness.module
    mod.MODEL_TYPE = "llava_llama3"
    model, transform = mod.init_model_and_transform(None, False, True, use_e5v=True)
    mod.cir(model, transform, mod.llama3_template.format("<image>\n Describe this image in one word:"),
            mod.llama3_template.format(GENERIC_QUERY), "cirr", None, torch.device("cpu"), batch_size=n)
    arrays["query_e5v"], arrays["query_e5v_prompts"] = harness.log[-1][1], np.array(harness.log[-1][0])
    return arrays


@contextlib.contextmanager
def upstream_fixes():
    """transformers 4.41.2 with the two LLaVA-NeXT fixes of later releases (for ``fixed_*``): (1)
    ``pack_image_features`` took ``get_anyres_image_grid_shape``'s (rows, columns) as (columns, rows), laying
    the features of non-square anyres grids out transposed; (2) ``_pad_for_patching`` padded
    ``(target - new) // 2`` on both sides, one pixel short for an odd difference (the short crops were then
    resized and centre-cropped); later releases pad the remainder after."""
    from transformers.models.llava_next import image_processing_llava_next as processing
    from transformers.models.llava_next import modeling_llava_next as modeling

    grid, pad = modeling.get_anyres_image_grid_shape, processing.LlavaNextImageProcessor._pad_for_patching

    def columns_rows(*args: Any) -> tuple[int, int]:  # the (columns, rows) its caller unpacks
        return grid(*args)[::-1]

    def pad_remainder(self: Any, image: Any, target_resolution: tuple, input_data_format: Any) -> Any:
        target_height, target_width = target_resolution
        new_height, new_width = processing._get_patch_output_size(image, target_resolution, input_data_format)
        top, left = (target_height - new_height) // 2, (target_width - new_width) // 2
        return self.pad(image, padding=((top, target_height - new_height - top),
                                         (left, target_width - new_width - left)))

    modeling.get_anyres_image_grid_shape, processing.LlavaNextImageProcessor._pad_for_patching = columns_rows, pad_remainder
    try:
        yield
    finally:
        modeling.get_anyres_image_grid_shape, processing.LlavaNextImageProcessor._pad_for_patching = grid, pad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--original", type=Path, required=True), parser.add_argument("--commit", required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests/goldens/e5v")
    args = parser.parse_args()
    n, out = len(recipe.IMAGE_SPECS), args.out.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        build_checkpoint(checkpoint := Path(tmp) / "tiny-e5v")
        recipe.write_recipe(checkpoint, out, SEED)
        harness = Harness(args.original.resolve(), checkpoint)
        with contextlib.chdir(tmp):  # main() appends its metrics to ./e5v.txt
            arrays = collect(harness, n)
            harness.images = [image.convert("RGB") for image in harness.images]  # alpha dropped
            with upstream_fixes():
                fixed = collect(harness, n)
    arrays.update({f"fixed_{k}": v for k, v in fixed.items() if not k.endswith("_prompts")})
    assert set(harness.asked) <= {"royokong/e5-v", "llava-hf/llava-v1.6-mistral-7b-hf", "unsloth/llama-3-8b-Instruct"}
    recipe.save_outputs(out, **arrays)
    command = ("/work/venvs/e5v/bin/python scripts/goldens/make_e5v.py --original /work/originals/e5v --commit "
               "$(git --git-dir=/work/.mirror/kongds+E5-V/repo rev-parse HEAD)")
    notes = (
        "retrieval.py's main() ran (use_e5v, fp32, batch_size=5) on data flickr30k (gallery `e5v`, texts), cirr "
        "and `fashioniq dress|shirt`; the `e5v` query ran through its cir() with VLM2Vec's E5-V composed prompt "
        "(E5-V has none). Hub names loaded the tiny folder; the 128256 init_model_and_transform writes into "
        "image_token_index (royokong/e5-v's <image> id) was set back to the tiny <image> id; load_dataset gave "
        "the shared inputs in their own modes (galleries: the 5 images then copies, 50 for cir's Recall@50; "
        "kept: the first batch); accelerator.gather recorded each batch. FashionIQ query i has two captions "
        "(modification i, caption i): cir strips '.?, ', joins with ', ', sums both orders' states. fixed_*: the "
        "same with the images as RGB and transformers 4.41.2's LLaVA-NeXT grid-shape and odd-padding bugs "
        "fixed as later releases fixed them (upstream_fixes). The tiny tokenizer pads left (assumed for "
        "royokong/e5-v: [:, -1] of a batch needs it). *_prompts: the texts given to the processor.")
    recipe.write_provenance(out, REPOSITORY, args.commit, FILES, PACKAGES, command, notes)
    print(f"wrote {out}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items()))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
