"""Write the BGE-VL-MLLM golden (``tests/goldens/bgevl_mllm``) by running BGE-VL-MLLM's OWN embedding code.

BGE-VL-MLLM-S1 / -S2 (BAAI) embed with the hub's remote code ``modeling_llavanext_for_embedding.py``
(``LLaVANextForEmbedding``: a ``LlavaNextForConditionalGeneration`` whose Mistral LM head is patched away,
``set_processor``, ``prepare_text_input`` (the ``[INST] ... <instruct> ... <query> ... [/INST]`` prompts) and
``data_process`` (opens each image, resizes it to 512 x 512, converts it to RGB, runs the processor)); the
README (FlagOpen/FlagEmbedding research/BGE_VL/README.md) then takes ``model(**inputs)[:, -1, :]`` and
L2-normalises it. The README pins transformers 4.45.2; run this in a side virtual environment with it:

    /work/venvs/bgevl_mllm/bin/python scripts/goldens/make_bgevl_mllm.py \\
        --original /work/originals/bgevl_mllm/modeling_llavanext_for_embedding.py --commit unknown

``--original`` is a copy of the hub file kept outside this repository; nothing of it is copied here, it is
imported from there (``AutoModel.from_pretrained(..., trust_remote_code=True)`` resolves the same class from
the checkpoint's ``auto_map``; here it is loaded with ``from_pretrained`` of that class directly). The
README's calls are repeated: ``set_processor``, ``data_process(images=paths, q_or_c="c")``,
``data_process(text=..., images=paths, q_or_c="q", task_instruction=...)``, ``data_process(text=...,
q_or_c="c")`` (its text-only candidate), ``model(**inputs, output_hidden_states=True)[:, -1, :]``, normalise.

The tiny checkpoint mirrors the hub one's layout: LLaVA-NeXT with a CLIP vision tower (feature layer -2, CLS
dropped), a Mistral text model (GQA, rope_theta 1e6, no sliding window), anyres grid pinpoints scaled down
from LLaVA-1.6's (336 -> 32), CLIP's mean / std, and a Llama-style tokenizer (legacy SentencePiece-BPE
format: ``Prepend("▁")`` + ``Replace(" ", "▁")`` normaliser, byte fallback, BOS added, left padding) in which
``[INST]`` / ``[/INST]`` are plain text pieces as in Mistral's, and ``<image>``, ``<pad>``, ``<instruct>``,
``<query>`` are added tokens.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "goldens"))
import recipe  # noqa: E402

SEED = 20250304
REPOSITORY = ("huggingface.co/BAAI/BGE-VL-MLLM-S1 modeling_llavanext_for_embedding.py, via a public GitHub copy "
              "(code-index file id 55992671731; the index does not expose its repository or commit)")
FILES = ["modeling_llavanext_for_embedding.py"]
INSTRUCTION = ("Retrieve the target image that best meets the combined criteria by using both the provided image "
               "and the image retrieval instructions: ")  # the README's (and the file's) CIR instruction
IMAGE_SIZE, PATCH = 32, 8
PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]  # LLaVA-1.6's, 336 -> 32
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
SPM = "\u2581"  # SentencePiece's word-boundary mark
ADDED = ["<image>", "<pad>", "<instruct>", "<query>"]


def tiny_tokenizer():
    """A Llama / Mistral-style fast tokenizer with a tiny BPE vocabulary trained on the prompt words:
    ``<unk>`` ``<s>`` ``</s>``, the 256 byte-fallback pieces, the trained pieces, then the added tokens."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import LlamaTokenizerFast

    texts = recipe.load_texts()
    # "[INST]" / "[/INST]" are never whole words of the corpus: like Mistral's (['▁[', 'INST', ']']) the
    # tokenizer spells them in pieces
    corpus = texts["modifications"] + texts["captions"] + [
        "[ INST ] [/ INST ]", INSTRUCTION, "a photo of an image with the same dress shirt in red blue green black white",
        "make it change the colour background add remove two cats dog on beach sofa parrot window room"]
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPM), normalizers.Replace(" ", SPM)])
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM, prepend_scheme="never")
    specials = ["<unk>", "<s>", "</s>"]
    trainer_tok.train_from_iterator(corpus * 4, trainers.BpeTrainer(vocab_size=420, special_tokens=specials,
                                                                    show_progress=False))
    trained = trainer_tok.get_vocab()
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(trainer_tok.to_str())["model"]["merges"]]
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)])}
    for token, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPM), normalizers.Replace(" ", SPM)])
    tok.decoder = decoders.Sequence([decoders.Replace(SPM, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ADDED])
    return LlamaTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                              pad_token="<pad>", add_bos_token=True, add_eos_token=False, legacy=True,
                              padding_side="left", clean_up_tokenization_spaces=False)


def build_checkpoint(folder: Path, original) -> None:
    """Save the tiny LLaVA-NeXT (Mistral) checkpoint and its processor to ``folder`` (random weights:
    ``recipe.write_recipe`` replaces them)."""
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        MistralConfig,
    )

    tokenizer = tiny_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ADDED}
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=32, hidden_act="quick_gelu")
    text = MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         rope_theta=1000000.0, sliding_window=None, rms_norm_eps=1e-5, bos_token_id=1,
                         eos_token_id=2, pad_token_id=ids["<pad>"], tie_word_embeddings=False)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=ids["<image>"],
                             image_grid_pinpoints=PINPOINTS, vision_feature_layer=-2,
                             vision_feature_select_strategy="default", image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
                             projector_hidden_act="gelu", tie_word_embeddings=False)
    torch.manual_seed(0)
    original.LLaVANextForEmbedding(config).save_pretrained(folder, safe_serialization=True)
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=PINPOINTS, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                       vision_feature_select_strategy="default", image_token="<image>").save_pretrained(folder)


def load_original(path: Path):
    spec = importlib.util.spec_from_file_location("modeling_llavanext_for_embedding", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run_original(original, folder: Path) -> dict[str, torch.Tensor]:
    """The README's steps on the shared inputs (images as file paths, as ``data_process`` takes them)."""
    model = original.LLaVANextForEmbedding.from_pretrained(folder, torch_dtype=torch.float32)
    model.eval()
    paths = [str(p) for p in recipe.image_paths()]
    texts = recipe.load_texts()
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        model.set_processor(str(folder))
        # data_process cannot batch texts without images (it zips them with images=None), so the captions
        # go one at a time: a single (unpadded) text candidate, as its README would embed one
        calls = {
            "gallery": [{"images": paths, "q_or_c": "c"}],
            "query": [{"text": texts["modifications"], "images": paths, "q_or_c": "q",
                       "task_instruction": INSTRUCTION}],
            "text": [{"text": caption, "q_or_c": "c"} for caption in texts["captions"]],
        }
        for name, calls_of_side in calls.items():
            embs, ids, masks = [], [], []
            for kwargs in calls_of_side:
                inputs = model.data_process(**kwargs)
                embs.append(F.normalize(model(**inputs, output_hidden_states=True)[:, -1, :], dim=-1))
                ids += list(inputs["input_ids"])
                masks += list(inputs["attention_mask"])
                if "pixel_values" in inputs:
                    out[f"{name}_pixel_values_sum"] = inputs["pixel_values"].double().sum(dim=(2, 3, 4))
            out[name] = torch.cat(embs)
            width = max(len(row) for row in ids)  # the one-at-a-time rows, left-padded here for storage
            pad = model.processor.tokenizer.pad_token_id
            out[f"{name}_input_ids"] = torch.stack([F.pad(r, (width - len(r), 0), value=pad) for r in ids])
            out[f"{name}_attention_mask"] = torch.stack([F.pad(m, (width - len(m), 0)) for m in masks])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", required=True, type=Path, help="the hub's modeling_llavanext_for_embedding.py")
    parser.add_argument("--commit", required=True, help="commit of the copy (or 'unknown')")
    parser.add_argument("--repository", default=REPOSITORY)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests/goldens/bgevl_mllm")
    args = parser.parse_args()
    original = load_original(args.original)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "checkpoint"
        build_checkpoint(folder, original)
        recipe.write_recipe(folder, args.out, SEED)
        outputs = run_original(original, folder)
    recipe.save_outputs(args.out, **outputs)
    digest = hashlib.sha256(args.original.read_bytes()).hexdigest()
    notes = (f"sha256 of {args.original.name}: {digest}. Loaded with from_pretrained of LLaVANextForEmbedding "
             "(float32, transformers' default attention for 4.45.2: sdpa); the README's data_process / "
             "[:, -1, :] / normalize steps. Tiny-tokenizer choices the hub files could not confirm offline: "
             "<instruct> and <query> are added tokens, padding side left (the README's [:, -1, :] is the last "
             "real token only with left padding).")
    recipe.write_provenance(args.out, args.repository, args.commit, FILES,
                            ["torch", "transformers", "tokenizers", "numpy", "pillow", "safetensors"],
                            " ".join([sys.executable, *sys.argv]), notes)
    for name in ("gallery", "query", "text"):
        print(name, tuple(outputs[name].shape), "tokens per row:", outputs[f"{name}_attention_mask"].sum(1).tolist())


if __name__ == "__main__":
    main()
