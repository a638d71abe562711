"""Write the goldens ``tests/goldens/xgenmm`` and ``tests/goldens/fire_release`` with the ORIGINAL code.

Run in the side environment (torch 2.13 CPU, transformers 4.44.2, einops, einops-exts; no torchvision:
``torchvision_shim``), with the original files checked out outside this repository::

    python scripts/goldens/make_xgenmm.py --original /work/originals/xgenmm --lavis /work/originals/lavis \
        --fire /work/originals/fire

- ``--original``: the HF hub files of xGen-MM (``modeling_xgenmm.py``, ``image_processing_blip_3.py``; the
  GitHub copy Beniko95J/eval_llm of ``xgen-mm-phi3-mini-base-r-v1.5``): config classes, model class,
  ``save_pretrained`` / ``from_pretrained``, ``update_special_tokens``, image processor.
- ``--lavis``: salesforce/LAVIS branch ``xgen-mm`` (``open_flamingo/src``): the interleave-r-v1.5 forward
  (anyres encoding, perceiver over crop groups, one ``<image>`` replaced by all of an image's tokens).
- ``--fire``: iLearn-Lab/SIGIR25-FIRE (``src/fire_open``): the release's embedding function.

Nothing here comes from a hub: SigLIP (which the original fetches by name) is built from the tiny
``siglip_config`` in the config, and the tokenizer is a tiny Llama-style BPE built below.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import shlex
import sys
import tempfile
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "goldens"))
sys.path.insert(0, str(HERE))
import recipe  # noqa: E402
import torchvision_shim  # noqa: E402
from xgenmm_tokenizer import build_tokenizer  # noqa: E402

SEED = 20240
CROP, PATCH = 12, 4  # 3 x 3 SigLIP tokens per crop, so the anyres regrouping of bands is exercised
GRIDS = [[CROP, 2 * CROP], [2 * CROP, CROP], [2 * CROP, 2 * CROP], [3 * CROP, CROP], [CROP, 3 * CROP]]
SIGLIP = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2,
          "patch_size": PATCH, "image_size": CROP}
PACKAGES = ["torch", "transformers", "tokenizers", "einops", "einops-exts", "numpy", "pillow", "safetensors", "pyyaml"]


def load_file_module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def package_without_init(name: str, folder: Path) -> None:
    """Make ``name`` importable as a package without running its ``__init__`` (LAVIS's imports open_clip)."""
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]
    sys.modules[name] = module


def build_checkpoint(folder: Path, xg, bp) -> None:
    """Tiny checkpoint written by the original classes' ``save_pretrained``."""
    from transformers import AutoTokenizer

    build_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    n0 = len(tokenizer)
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text = {"model_type": "phi3", "initial_tokenizer_len": n0, "vocab_size": n0 + 4, "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
            "max_position_embeddings": 512, "original_max_position_embeddings": 512, "sliding_window": 2047,
            "bos_token_id": 1, "eos_token_id": end_of_text, "pad_token_id": end_of_text}  # published: pad = 32000
    config = xg.XGenMMConfig(
        vision_encoder_config={"image_aspect_ratio": "anyres", "anyres_patch_sampling": True, "anyres_grids": GRIDS,
                               "siglip_config": SIGLIP},
        vision_tokenizer_config={"vis_feature_dim": SIGLIP["hidden_size"], "lang_embedding_dim": 32, "num_vis_tokens": 4},
        text_config=text)
    config.architectures = ["XGenMMModelForConditionalGeneration"]
    config.auto_map = {"AutoConfig": "modeling_xgenmm.XGenMMConfig",
                       "AutoModelForVision2Seq": "modeling_xgenmm.XGenMMModelForConditionalGeneration"}
    torch.manual_seed(0)
    xg.XGenMMModelForConditionalGeneration(config).save_pretrained(str(folder), safe_serialization=True)
    processor = bp.Blip3ImageProcessor(size=[CROP, CROP])
    processor.grids = GRIDS
    processor.auto_map = {"AutoImageProcessor": "image_processing_blip_3.Blip3ImageProcessor"}
    processor.save_pretrained(str(folder))


def siglip_from_config(xg) -> None:
    """The original builds SigLIP with ``AutoModel.from_pretrained("google/siglip-so400m-patch14-384")``; offline
    and tiny, it is built from the config's ``siglip_config`` (eager attention, as the goldens use)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    def from_pretrained(name, **kwargs):
        assert name == "google/siglip-so400m-patch14-384", name
        vision = SiglipVisionModel(SiglipVisionConfig(**xg._TINY_SIGLIP, attn_implementation="eager"))
        return types.SimpleNamespace(vision_model=vision.vision_model)

    xg.AutoModel = types.SimpleNamespace(from_pretrained=from_pretrained)
    init = xg.XGenMMModelForConditionalGeneration.__init__

    def patched(self, config):
        xg._TINY_SIGLIP = dict(config.vision_encoder_config.siglip_config)
        config.text_config._attn_implementation = "eager"
        init(self, config)

    xg.XGenMMModelForConditionalGeneration.__init__ = patched


class _Captured(Exception):
    pass


def get_vision_tokens(self, images, image_sizes, device):
    """FiRE calls ``model.vlm.get_vision_tokens(images, image_sizes, device)``, which no published xGen-MM file
    defines. It is read here as the vision half of the interleave forward: LAVIS ``XGenMMPerceiver.forward`` is
    run and the ``vision_tokens`` it hands to ``_prepare_inputs_for_forward`` (per sample, per image) are taken."""
    def capture(**kwargs):
        raise _Captured(kwargs["vision_tokens"])

    self._prepare_inputs_for_forward = capture
    try:
        self.forward(vision_x=images, lang_x=torch.zeros(1, 1, dtype=torch.long, device=device), image_size=image_sizes)
    except _Captured as got:
        return got.args[0]
    finally:
        del self._prepare_inputs_for_forward
    raise RuntimeError("the forward did not reach _prepare_inputs_for_forward")


def load_original(folder: Path, xg):
    """``from_pretrained`` of the original class, with its ``vlm`` rebuilt as LAVIS's interleave perceiver and
    the ``vlm.*`` weights loaded into it strictly (what LAVIS ``convert_hf_model.py`` does)."""
    from open_flamingo.src.xgenmm import XGenMMPerceiver

    model, info = xg.XGenMMModelForConditionalGeneration.from_pretrained(str(folder), output_loading_info=True)
    assert not any(info.values()), info
    config = model.config
    vlm = XGenMMPerceiver(
        vision_encoder=model.vlm.vision_encoder, lang_model=model.vlm.lang_model,
        vis_feature_dim=config.vision_tokenizer_config.vis_feature_dim,
        initial_tokenizer_len=config.text_config.initial_tokenizer_len, pad_token_id=config.text_config.pad_token_id,
        decoder_layers_attr_name="model.layers", image_aspect_ratio="anyres", anyres_patch_sampling=True,
        num_vision_tokens=config.vision_tokenizer_config.num_vis_tokens)
    vlm.anyres_grids = config.vision_encoder_config.anyres_grids  # as LAVIS instruction_finetune.py sets it
    vlm.load_state_dict(model.vlm.state_dict(), strict=True)
    vlm.get_vision_tokens = types.MethodType(get_vision_tokens, vlm)
    model.vlm = vlm
    return model.eval()


def load_image_processor(folder: Path, bp):
    processor = bp.Blip3ImageProcessor.from_pretrained(str(folder))
    # the base copy's __init__ sets grids = None whatever the file says; the interleave one uses them
    processor.grids = json.loads((folder / "preprocessor_config.json").read_text())["grids"]
    return processor


def golden_xgenmm(folder: Path, xg, bp, fire_cfg) -> dict:
    from transformers import AutoTokenizer

    model = load_original(folder, xg)
    tokenizer = model.update_special_tokens(AutoTokenizer.from_pretrained(str(folder)))
    processor = load_image_processor(folder, bp)
    images, texts = recipe.load_images(), recipe.load_texts()
    pixels = [processor([img], image_aspect_ratio="anyres")["pixel_values"] for img in images]
    out = {"pixel_values": torch.cat([p[0] for p in pixels]), "num_crops": [p.shape[1] for p in pixels],
           "image_sizes": [list(img.size) for img in images]}
    prompts = {"g": [fire_cfg["prompts"]["gallery"]] * 5,
               "q": [fire_cfg["prompts"]["eval_query"].replace("{modification}", m.strip()) for m in texts["modifications"]]}
    for key, strings in prompts.items():
        ids, hidden = [], []
        for img, px, s in zip(images, pixels, strings, strict=True):
            enc = tokenizer(s, return_tensors="pt")
            with torch.no_grad():
                res = model.vlm(vision_x=[[px]], lang_x=enc["input_ids"], attention_mask=enc["attention_mask"],
                                image_size=[[img.size]], output_hidden_states=True)
            ids.append(enc["input_ids"][0])
            hidden.append(res.hidden_states[-1][0])
        out.update({f"{key}_ids": torch.cat(ids), f"{key}_len": [len(i) for i in ids],
                    f"{key}_hidden": torch.cat(hidden), f"{key}_hlen": [len(h) for h in hidden]})
    return out


def golden_fire(folder: Path, xg, bp, fm, ft, fd, fc) -> dict:
    from transformers import AutoTokenizer

    fm.AutoModelForVision2Seq = types.SimpleNamespace(from_pretrained=lambda name, **kw: load_original(Path(name), xg))
    fm.AutoTokenizer = types.SimpleNamespace(from_pretrained=lambda name, **kw: AutoTokenizer.from_pretrained(name))
    fm.AutoImageProcessor = types.SimpleNamespace(from_pretrained=lambda name, **kw: load_image_processor(Path(name), bp))
    cfg = copy.deepcopy(fc.DEFAULT_CONFIG)
    cfg["model"]["base_model"] = str(folder)
    cfg["model"]["lora"]["enabled"] = False  # the base model, no adapter
    wrapper = fm.FiREModelWrapper(cfg).eval()
    texts, edge = recipe.load_texts(), cfg["data"]["max_short_edge"]
    loaded = [fd.load_preprocessed_image(p, wrapper.image_processor, edge) for p in recipe.image_paths()]
    out = {}
    with torch.no_grad():
        images, sizes, _, tokens = ft.make_gallery_collator(wrapper, cfg["prompts"]["gallery"], cfg["eval"]["max_length"])(
            [(im, sz, i) for i, (im, sz) in enumerate(loaded)])
        out.update(gallery=wrapper.encode_gallery(tokens, images, sizes), g_input_ids=tokens["input_ids"],
                   g_attention_mask=tokens["attention_mask"])
        items = [{"reference_images": im, "reference_sizes": sz, "target_images": im, "target_sizes": sz,
                  "modification": m, "target_id": i, "reference_id": i, "reference_caption": "", "target_caption": c}
                 for i, ((im, sz), m, c) in enumerate(zip(loaded, texts["modifications"], texts["captions"], strict=True))]
        b = ft.make_query_collator(wrapper, cfg["prompts"]["eval_query"], cfg["eval"]["max_length"])(items)
        out.update(query=wrapper.encode_query(b["query_tokens"], b["reference_images"], b["reference_sizes"]),
                   q_input_ids=b["query_tokens"]["input_ids"], q_attention_mask=b["query_tokens"]["attention_mask"])
        b = ft.make_train_collator(wrapper, cfg["prompts"], cfg["training"]["max_length"])(items)
        out.update(text=wrapper.encode_target(b["target_tokens"], b["target_images"], b["target_sizes"]),
                   t_input_ids=b["target_tokens"]["input_ids"], t_attention_mask=b["target_tokens"]["attention_mask"])
    out["image_sizes"] = torch.stack([sz[0] for _, sz in loaded])
    return out


def main() -> None:
    root = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--original", type=Path, required=True, help="folder with modeling_xgenmm.py, image_processing_blip_3.py")
    ap.add_argument("--lavis", type=Path, required=True, help="salesforce/LAVIS checkout, branch xgen-mm")
    ap.add_argument("--fire", type=Path, required=True, help="iLearn-Lab/SIGIR25-FIRE checkout")
    ap.add_argument("--commit", default="7138e307599e9d20978c744fb69e2093772733ed")
    ap.add_argument("--lavis-commit", default="d699f7e54fbe7072c1fbef3b61a4f5e6d3591bd3")
    ap.add_argument("--fire-commit", default="8e8626efa14a1ed277e8a8605e0cf0f65ef06d7c")
    ap.add_argument("--out", type=Path, default=root / "tests" / "goldens" / "xgenmm")
    ap.add_argument("--fire-out", type=Path, default=root / "tests" / "goldens" / "fire_release")
    args = ap.parse_args()
    import transformers  # noqa: F401 - before the stand-ins: it probes which packages are installed

    torchvision_shim.install()
    sys.modules["peft"] = types.ModuleType("peft")  # FiRE imports it; with LoRA disabled nothing of it is used
    for name in ("LoraConfig", "PeftModel", "TaskType", "get_peft_model"):
        setattr(sys.modules["peft"], name, None)
    xg = load_file_module("modeling_xgenmm", args.original / "modeling_xgenmm.py")
    bp = load_file_module("image_processing_blip_3", args.original / "image_processing_blip_3.py")
    for pkg, sub in (("open_flamingo", ""), ("open_flamingo.src", "src"), ("open_flamingo.train", "train")):
        package_without_init(pkg, args.lavis / "open_flamingo" / sub)
    sys.path.insert(0, str(args.fire / "src"))
    fm, ft, fd, fc = (importlib.import_module(f"fire_open.{m}") for m in ("modeling", "trainer", "datasets", "config"))
    siglip_from_config(xg)
    torch.use_deterministic_algorithms(True)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_checkpoint(folder, xg, bp)
        recipe.write_recipe(folder, args.out, SEED)
        recipe.write_recipe(folder, args.fire_out, SEED)  # the same seed: the same weights in both goldens
        recipe.save_outputs(args.out, **golden_xgenmm(folder, xg, bp, fc.DEFAULT_CONFIG))
        recipe.save_outputs(args.fire_out, **golden_fire(folder, xg, bp, fm, ft, fd, fc))
    shim = ("torchvision is not installed: scripts/goldens/torchvision_shim.py stands in for the Resize((S,S), "
            "bicubic) / ToTensor / Normalize / Compose calls of image_processing_blip_3.py, computing what "
            "torchvision 0.17 computes for PIL inputs. SigLIP, which the original loads by hub name, is built "
            "from config.vision_encoder_config.siglip_config. Attention: eager everywhere (transformers 4.44's "
            "Phi-3 has no sdpa). Blip3ImageProcessor.grids is set from preprocessor_config.json after loading "
            "(the base copy's __init__ resets it to None).")
    xgenmm_files = ["modeling_xgenmm.py", "image_processing_blip_3.py"]
    lavis_files = ["open_flamingo/src/vlm.py", "open_flamingo/src/xgenmm.py", "open_flamingo/src/helpers.py",
                   "open_flamingo/src/utils.py", "open_flamingo/train/any_res_data_utils.py"]
    recipe.write_provenance(
        args.out, "Beniko95J/eval_llm (HF xgen-mm-phi3-mini-base-r-v1.5 files) + salesforce/LAVIS@xgen-mm",
        f"{args.commit} + LAVIS {args.lavis_commit}", xgenmm_files + [f"LAVIS:{f}" for f in lavis_files], PACKAGES, command,
        "Forward: the INTERLEAVE-r-v1.5 one (LAVIS XGenMMPerceiver.forward: anyres crops, perceiver per crop "
        "group, each <image> replaced by all its image's tokens), one sample per call, output_hidden_states; the "
        "model is built, saved and loaded by the HF file's classes and its vlm.* weights loaded strictly into "
        "LAVIS's XGenMMPerceiver (as LAVIS convert_hf_model.py does). Prompts: FiRE's release gallery / eval_query "
        "strings. pixel_values: Blip3ImageProcessor(images=[img], image_aspect_ratio='anyres') per image. " + shim)
    recipe.write_provenance(
        args.fire_out, "iLearn-Lab/SIGIR25-FIRE", args.fire_commit,
        ["src/fire_open/modeling.py", "src/fire_open/trainer.py", "src/fire_open/datasets.py",
         "src/fire_open/config.py"], PACKAGES, command,
        "FiREModelWrapper.encode_gallery / encode_query / encode_target on batches of the 5 shared items built by "
        "the release's own collators (make_gallery_collator, make_query_collator, make_train_collator: target "
        "caption text) and load_preprocessed_image (RGB first, short edge <= 380); DEFAULT_CONFIG prompts, "
        "LoRA disabled (peft stubbed, unused). The wrapper's hub loads return the tiny checkpoint loaded as in "
        "the xgenmm golden (same files, same weights). get_vision_tokens, which FiRE calls but no published "
        "xGen-MM file defines, is the vision half of LAVIS XGenMMPerceiver.forward (captured where it calls "
        "_prepare_inputs_for_forward). " + shim)


if __name__ == "__main__":
    main()
