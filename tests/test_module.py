"""CIRModule: learning, trainable-only checkpoints, evaluation numbers checked independently."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch

from cir_lightning.backbones import HFMultimodalBackbone, LoRA, Prompts
from cir_lightning.data import JsonlCIRDataModule
from cir_lightning.errors import CIRConfigError, CIRModelError
from cir_lightning.module import CIRModule

warnings.filterwarnings("ignore", category=FutureWarning)


def make_module(tiny_model_dir, r=4, **kwargs) -> CIRModule:
    bb = HFMultimodalBackbone(str(tiny_model_dir), prompts=Prompts("short"), lora=LoRA(r=r, alpha=2 * r, dropout=0.0))
    kwargs.setdefault("optimizer", lambda p: torch.optim.AdamW(p, lr=3e-3))
    return CIRModule(bb, warmup=0, lr_schedule="constant", **kwargs)


def trainer(tmp_path, **kwargs) -> pl.Trainer:
    kwargs.setdefault("max_steps", 2)
    kwargs.setdefault("num_sanity_val_steps", 0)
    return pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, **kwargs)


def test_training_reduces_the_loss_on_a_fixed_batch(tiny_model_dir, synthetic_root):
    module = make_module(tiny_model_dir, r=8)
    dm = JsonlCIRDataModule(str(synthetic_root), batch_size=16)
    dm.setup("fit")
    dm.connect(module.backbone.collator)
    batch = next(iter(dm.train_dataloader()))
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    module.train()
    losses = []
    for _ in range(25):
        terms = module.loss(module.backbone(batch["query"]), module.backbone(batch["target"]))
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(terms["loss"].item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_batches_are_made_in_worker_processes(tiny_model_dir, synthetic_root):
    module = make_module(tiny_model_dir)
    dm = JsonlCIRDataModule(str(synthetic_root), batch_size=8, num_workers=2)
    dm.setup("fit")
    dm.connect(module.backbone.collator)
    batch = next(iter(dm.train_dataloader()))
    assert batch["query"]["input_ids"].shape[0] == 8
    assert batch["target"]["pixel_values"].dtype == torch.float32
    group = batch["target_group"]
    assert all(group[i] <= i and group[group[i]] == group[i] for i in range(len(group)))  # first-occurrence ids


def test_validation_metrics_equal_an_independent_computation(tiny_model_dir, synthetic_root, tmp_path):
    module = make_module(tiny_model_dir)
    dm = JsonlCIRDataModule(str(synthetic_root), eval_batch_size=50)
    metrics = trainer(tmp_path).validate(module, dm, verbose=False)[0]
    queries, gallery = dm.val_sets[0]
    module.eval()
    with torch.no_grad():
        q = module.backbone.encode_query([queries[i]["reference_image"] for i in range(len(queries))],
                                         [queries[i]["modification"] for i in range(len(queries))])
        g = torch.cat([module.backbone.encode_gallery([gallery[i]["image"] for i in range(s, min(s + 100, len(gallery)))])
                       for s in range(0, len(gallery), 100)])
    scores = (q @ g.T).tolist()
    for k in (1, 5, 10, 50):
        hits, rr = 0, 0.0
        for i, row in enumerate(scores):
            order = [j for j in sorted(range(len(row)), key=lambda j, row=row: (-row[j], j))
                     if j not in queries.excluded[i]][:k]
            rank = next((r for r, j in enumerate(order, 1) if j in queries.positives[i]), None)
            hits += rank is not None
            rr += 1 / rank if rank else 0
        assert metrics[f"val/Recall@{k}"] == pytest.approx(hits / len(scores), abs=1e-6)
        assert metrics[f"val/MRR@{k}"] == pytest.approx(rr / len(scores), abs=1e-5)


def test_search_is_skipped_in_sanity_check_and_on_partial_evaluation(tiny_model_dir, synthetic_root, tmp_path):
    module = make_module(tiny_model_dir)
    calls = []
    original = module.evaluator.compute
    module.evaluator.compute = lambda subsets, **kw: calls.append(1) or original(subsets, **kw)
    dm = JsonlCIRDataModule(str(synthetic_root), batch_size=8, eval_batch_size=8)
    t = trainer(tmp_path, max_steps=1, limit_train_batches=1, num_sanity_val_steps=2, limit_val_batches=2)
    with pytest.warns(UserWarning, match="saw only part"):
        t.fit(module, dm)
    assert len(calls) == 1  # after the epoch only, not in the sanity check
    assert not any(k.startswith("val/Recall") for k in t.callback_metrics)  # no number from a partial gallery


def test_checkpoint_holds_only_trainable_weights_and_reloads(tiny_model_dir, synthetic_root, tmp_path):
    module = make_module(tiny_model_dir)
    dm = JsonlCIRDataModule(str(synthetic_root), batch_size=8, eval_batch_size=64)
    t = trainer(tmp_path, max_steps=3, limit_train_batches=3)
    t.fit(module, dm)
    ckpt_path = t.checkpoint_callback.best_model_path
    ckpt = torch.load(ckpt_path, weights_only=True)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert set(ckpt["state_dict"]) == trainable
    assert all("lora_" in k for k in ckpt["state_dict"])
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    trained = t.validate(module, dm, verbose=False)[0]
    fresh = make_module(tiny_model_dir)
    untrained = trainer(tmp_path).validate(fresh, dm, verbose=False)[0]
    reloaded = trainer(tmp_path).validate(fresh, dm, ckpt_path=ckpt_path, verbose=False)[0]
    assert reloaded == pytest.approx(trained, abs=1e-6)
    assert reloaded != pytest.approx(untrained, abs=1e-6)
    other = make_module(tiny_model_dir, r=2)
    with pytest.raises(CIRModelError, match="do not match this model"):
        trainer(tmp_path).validate(other, dm, ckpt_path=ckpt_path, verbose=False)


def test_adapter_export_never_overwrites(tiny_model_dir, synthetic_root, tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "mine.txt").write_text("keep")
    module = make_module(tiny_model_dir)
    dm = JsonlCIRDataModule(str(synthetic_root), batch_size=8, val_queries_file=None)
    trainer(tmp_path, max_steps=1, enable_checkpointing=False).fit(module, dm)
    assert (tmp_path / "adapter" / "mine.txt").read_text() == "keep"
    assert (tmp_path / "adapter-1" / "adapter_config.json").is_file()


def test_a_nan_training_loss_stops_the_run_at_its_step(tiny_model_dir, synthetic_root, tmp_path):
    """A diverged run trained on with NaN losses (every weight NaN) and failed only at the next validation, whose
    message blamed the queries and float16."""
    module = make_module(tiny_model_dir, optimizer=lambda p: torch.optim.AdamW(p, lr=1e10))
    dm = JsonlCIRDataModule(str(synthetic_root), batch_size=8, val_queries_file=None)
    fit = trainer(tmp_path, max_steps=6, enable_checkpointing=False)
    with pytest.raises(CIRModelError, match=r"^the training loss is nan at step \d \(epoch 0, batch \d\): the "
                                            r"weights diverged .* lower `model.optimizer.init_args.lr`") as error:
        fit.fit(module, dm)
    assert int(str(error.value).split("step ")[1].split()[0]) == fit.global_step + 1 < 6
    assert not (tmp_path / "adapter").exists()  # no adapter exported as if trained


def test_caption_target_side_needs_captions(tiny_model_dir, synthetic_root, tmp_path):
    dm = JsonlCIRDataModule(str(synthetic_root), batch_size=8, val_queries_file=None)
    module = make_module(tiny_model_dir, target_side="caption")
    forwards = []
    module.backbone.register_forward_hook(lambda *_: forwards.append(1))
    with pytest.raises(CIRConfigError, match=r"^`target_side: caption` trains on target captions: set "
                                             r"`data.init_args.with_captions: true`"):
        trainer(tmp_path, max_steps=1).fit(module, dm)
    assert forwards == []  # refused at setup, before any batch was embedded
    dm = JsonlCIRDataModule(str(synthetic_root), batch_size=8, val_queries_file=None, with_captions=True)
    trainer(tmp_path, max_steps=1, enable_checkpointing=False).fit(make_module(tiny_model_dir, target_side="caption"), dm)


def test_nothing_to_train_is_reported(tiny_model_dir, synthetic_root, tmp_path):
    module = CIRModule(HFMultimodalBackbone(str(tiny_model_dir), lora=None))
    dm = JsonlCIRDataModule(str(synthetic_root), batch_size=8, val_queries_file=None)
    with pytest.raises(CIRConfigError, match="no trainable parameters"):
        trainer(tmp_path, max_steps=1).fit(module, dm)


def test_schedule_without_a_known_length_is_a_clear_error(tiny_model_dir, synthetic_root, tmp_path):
    dm = JsonlCIRDataModule(str(synthetic_root), batch_size=8, val_queries_file=None)
    module = CIRModule(make_module(tiny_model_dir).backbone, warmup=0.1)
    with pytest.raises(CIRConfigError, match="needs a known training length"):
        trainer(tmp_path, max_steps=-1, max_epochs=-1).fit(module, dm)


def test_query_with_several_texts_is_the_normalised_mean_of_their_embeddings(tiny_model_dir):
    from PIL import Image

    module = make_module(tiny_model_dir).eval()
    red, blue = Image.new("RGB", (32, 32), "red"), Image.new("RGB", (32, 32), "blue")
    samples = [{"index": 0, "reference_image": red, "modification": ("make it a dress", "and shorter")},
               {"index": 1, "reference_image": blue, "modification": "make it green"}]
    batch = module.backbone.collator.queries(samples)
    assert batch["query_groups"].tolist() == [0, 0, 1]
    with torch.no_grad():
        got = module.backbone.embed_batch(batch, "query")
        each = module.backbone.encode_query([red, red, blue], ["make it a dress", "and shorter", "make it green"])
    assert got.shape == (2, each.shape[1])
    expected = torch.nn.functional.normalize(torch.stack([each[0] + each[1], each[2]]), dim=-1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    single = module.backbone.collator.queries(samples[1:])
    assert "query_groups" not in single


@pytest.mark.parametrize(("precision", "accumulate"), [("bf16-mixed", 1), ("32-true", 2)])
def test_fit_with_mixed_precision_and_gradient_accumulation(tiny_model_dir, tmp_path, precision, accumulate):
    from cir_lightning.data import SyntheticCIRDataModule

    module = CIRModule(HFMultimodalBackbone(str(tiny_model_dir), prompts=Prompts("short"), lora=LoRA(r=2, alpha=4)),
                       warmup=1)
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    seen = set()
    layer = next(m for n, m in module.backbone.named_modules() if n.endswith("layers.0.self_attn.q_proj.base_layer"))
    layer.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
    data = SyntheticCIRDataModule(str(tmp_path / "data"), num_train=32, num_val=8, image_size=16, batch_size=8)
    fit = trainer(tmp_path, max_steps=-1, max_epochs=1, precision=precision, accumulate_grad_batches=accumulate,
                  limit_val_batches=0, enable_checkpointing=False)
    fit.fit(module, datamodule=data)
    # 4 batches: 4 / accumulate optimizer steps, and the schedule counts optimizer steps
    assert fit.global_step == 4 // accumulate
    assert fit.lr_scheduler_configs[0].scheduler.last_epoch == 4 // accumulate
    assert seen == ({torch.bfloat16} if precision == "bf16-mixed" else {torch.float32})  # the model ran in it
    for name, p in module.named_parameters():  # the trained (master) weights stay float32 and moved
        if p.requires_grad:
            assert p.dtype == torch.float32
            assert not torch.equal(p, before[name]) or "lora_A" in name, name
    assert torch.isfinite(fit.callback_metrics["train/loss"])


def small_gallery(synthetic_root, folder) -> str:
    """A gallery file of the val queries' references and targets plus a few more scenes (cheap validations)."""
    import json

    queries = [json.loads(line) for line in (synthetic_root / "val_queries.jsonl").read_text().splitlines()]
    wanted = {q["reference_id"] for q in queries} | {q["target_id"] for q in queries}
    lines = [line for i, line in enumerate((synthetic_root / "gallery.jsonl").read_text().splitlines())
             if json.loads(line)["image_id"] in wanted or i < 16]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gallery.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "gallery.jsonl")


def test_validate_before_fit_records_the_untrained_model_and_leaves_training_unchanged(
        tiny_model_dir, synthetic_root, tmp_path, capsys):
    from lightning.pytorch.callbacks import ModelCheckpoint

    gallery = small_gallery(synthetic_root, tmp_path)
    num_gallery = len(open(gallery).read().splitlines())

    def data() -> JsonlCIRDataModule:
        return JsonlCIRDataModule(str(synthetic_root), gallery_file=gallery, batch_size=4, eval_batch_size=64)

    def fit(before: bool, folder: str) -> tuple[CIRModule, pl.Trainer]:
        pl.seed_everything(0)
        module = make_module(tiny_model_dir, validate_before_fit=before)
        best = ModelCheckpoint(dirpath=tmp_path / folder, monitor="val/Recall@1", mode="max")
        t = trainer(tmp_path / folder, max_steps=-1, max_epochs=2, limit_train_batches=1, callbacks=[best])
        t.fit(module, data())
        return module, t

    module, t = fit(True, "before")
    out = capsys.readouterr().out
    plain, _ = fit(False, "plain")
    for name, weight in plain.named_parameters():  # the extra validation draws no random number
        torch.testing.assert_close(dict(module.named_parameters())[name], weight, rtol=0, atol=0)
    # the metrics before training are those of the untrained model, validated on its own
    untrained = trainer(tmp_path).validate(make_module(tiny_model_dir, write_results=False), data(),
                                           verbose=False)[0]
    history = module.evaluation.history
    assert {f"val/{k}": v for k, v in history.before.items()} == pytest.approx(untrained, abs=1e-6)
    assert [v.epoch for v in history.validations] == [0, 1]
    # the summary, printed once at the end: best as the checkpoint chose it, last, before, chance (1 in the
    # gallery minus the excluded reference)
    assert out.count("what training changed") == 1
    last_line = out.strip().splitlines()[-1]
    best_epoch = int(t.checkpoint_callback.best_model_path.split("epoch=")[1].split("-")[0])
    assert last_line == (f"val/Recall@1 (percent): {100 * history.before['Recall@1']:.2f} before fit -> "
                         f"{100 * t.checkpoint_callback.best_model_score.item():.2f} best (epoch {best_epoch}) -> "
                         f"{100 * t.callback_metrics['val/Recall@1'].item():.2f} last (epoch 1); "
                         f"chance {100 / (num_gallery - 1):.2f}")
    # the checkpoint's monitor, and only it, is in the progress bar
    assert [k for k in t.progress_bar_metrics if k.startswith("val/")] == ["val/Recall@1"]


def test_a_warm_up_as_long_as_the_training_is_warned_about():
    """FiRE's 3000 warm-up steps on a 4-step training: the learning rate never got past 0.13% of `lr`."""
    from cir_lightning.optim import lr_scheduler

    def optimizer():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    with pytest.warns(UserWarning, match=r"`warmup: 3000` is 3000 optimizer steps, and the training has 4: the "
                                         r"learning rate never reaches `lr` \(it ends at 0\.13% of it\)"):
        lr_scheduler(optimizer(), "linear", warmup=3000, total_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lr_scheduler(optimizer(), "linear", warmup=3, total_steps=4)  # reaches lr at its last step
        lr_scheduler(optimizer(), "linear", warmup=0.99, total_steps=4)  # a fraction: always shorter
        lr_scheduler(optimizer(), "constant", warmup=3000, total_steps=float("inf"))  # length unknown


def test_evaluation_options_are_checked_and_stores_declared(tmp_path):
    """The module's evaluation options are one checked dataclass (the names LightningCLI shows); a gallery store
    is what `GalleryStore` declares: both stores keep it, and anything else is refused in one line."""
    from types import SimpleNamespace

    from cir_lightning.evaluation import EVALUATION_OPTIONS, Evaluation, EvaluationOptions
    from cir_lightning.retrieval.gallery_cache import GalleryCache, GalleryStore
    from cir_lightning.retrieval.memmap import MemmapGalleries

    assert EVALUATION_OPTIONS[:2] == ("eval_ks", "search")
    assert "pictures" in EVALUATION_OPTIONS
    assert EvaluationOptions(eval_ks=[50, 1, 5]).eval_ks == [1, 5, 50]
    with pytest.raises(CIRConfigError, match="`eval_ks` must be a non-empty list"):
        EvaluationOptions(eval_ks=[])
    evaluation = Evaluation(EvaluationOptions(embedding_cache=str(tmp_path / "caches")))
    assert isinstance(evaluation.cache, GalleryCache)
    assert evaluation.outputs.cache is evaluation.cache
    store = MemmapGalleries(tmp_path / "e.memmap", dim=4, save=True)
    assert isinstance(store, GalleryStore)
    evaluation.use_cache(store)
    assert evaluation.cache is store
    assert evaluation.outputs.cache is store
    with pytest.raises(CIRConfigError, match="needs `lookup_sets`, `provide`, `save`, `report` and `location`.*"
                                             "SimpleNamespace"):
        evaluation.use_cache(SimpleNamespace(lookup_sets=None))
    assert evaluation.cache is store
    assert store.location == tmp_path / "e.memmap"
    assert evaluation.cache.location == tmp_path / "e.memmap"
    unplaced = SimpleNamespace(lookup_sets=None, provide=None, save=None, report=dict)  # was taken for a store
    with pytest.raises(CIRConfigError, match="needs .* and `location`"):
        evaluation.use_cache(unplaced)
    assert GalleryCache(tmp_path / "caches").location == tmp_path / "caches"


def test_galleries_cached_for_some_processes_only_are_one_line_not_a_hang(tmp_path, monkeypatch):
    """Under DDP a gallery cache one process finds and another does not (a folder on one node's disk) gave the
    processes loaders of different lengths; every process now stops with the same line."""
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    from cir_lightning.data.base import CIRDataModule
    from cir_lightning.evaluation import Evaluation, EvaluationOptions

    evaluation = Evaluation(EvaluationOptions(embedding_cache=str(tmp_path / "caches")))
    monkeypatch.setattr(evaluation.cache, "lookup_sets", lambda *args, **kwargs: {0})  # this process found it
    seen = []
    monkeypatch.setattr("cir_lightning.evaluation.same_on_every_rank", lambda found: seen.append(found) or False)
    trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.VALIDATING), precision="32-true")
    module = SimpleNamespace(_trainer=trainer, trainer=trainer, backbone=SimpleNamespace(identity=lambda _: {}))
    lookup = evaluation.connect(module, CIRDataModule())
    with pytest.raises(CIRConfigError, match=f"`model.embedding_cache` `{tmp_path / 'caches'}`: some processes found "
                                             "cached galleries that others did not; it must be one folder every"):
        lookup("validate", [(None, None), (None, None)])
    assert seen == [[1, 0]]

    class Store:  # a store of its own (use_cache), whose report names no folder: its declared `location` is named
        location = tmp_path / "elsewhere"

        def lookup_sets(self, *args, **kwargs):
            return {0}

        def provide(self, evaluator):
            pass

        def save(self, evaluator):
            return []

        def report(self):
            return {"loaded": [], "written": []}

    evaluation = Evaluation(EvaluationOptions())
    evaluation.use_cache(Store())
    with pytest.raises(CIRConfigError, match=f"^the embedding cache `{tmp_path / 'elsewhere'}`: some processes found "):
        evaluation.connect(module, CIRDataModule())("validate", [(None, None)])


def test_a_sharded_search_of_subsets_ranked_within_candidates_is_refused_before_embedding():
    """CIRR's Recall_subset needs the whole gallery on every process: with `search.sharded` under DDP the evaluator
    refused it only at the end of the epoch, after every query and gallery image was embedded."""
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    from cir_lightning.data.base import CIRDataModule
    from cir_lightning.evaluation import Evaluation, EvaluationOptions
    from cir_lightning.retrieval import SearchConfig

    datamodule = CIRDataModule()
    class Queries(list):  # CIRR's val queries: one positive each, ranked within candidates too
        name, positives, candidates = "cirr", [[0]], [[0, 1]]

    datamodule.val_sets = [(Queries(["q0"]), ["g0", "g1"])]
    evaluation = Evaluation(EvaluationOptions(search=SearchConfig(sharded=True)))
    for world_size, fn in ((1, TrainerFn.VALIDATING), (2, TrainerFn.PREDICTING), (2, TrainerFn.TESTING),
                           (2, TrainerFn.VALIDATING)):
        trainer = SimpleNamespace(state=SimpleNamespace(fn=fn), world_size=world_size)
        module = SimpleNamespace(_trainer=trainer, trainer=trainer)
        if fn != TrainerFn.VALIDATING or world_size == 1:  # one process holds the whole gallery; predict only
            assert evaluation.connect(module, datamodule) is None  # embeds; test evaluates test_sets (none here)
            continue
        with pytest.raises(CIRConfigError, match="subset 'cirr': rankings within candidates .* turn `search.sharded"):
            evaluation.connect(module, datamodule)


def test_fit_reads_the_validation_subsets_once_for_its_monitor_and_sharded_checks(monkeypatch):
    """`fit` with `search.sharded` under DDP read the validation datasets' ground truth (O(queries)) twice at set-up:
    once for the checkpoints' monitors, once for the sharded search's check."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.trainer.states import TrainerFn

    import cir_lightning.evaluation as evaluation_module
    from cir_lightning.data.base import CIRDataModule
    from cir_lightning.evaluation import Evaluation, EvaluationOptions
    from cir_lightning.retrieval import SearchConfig

    calls = []
    read = evaluation_module.subsets_from_datasets
    monkeypatch.setattr(evaluation_module, "subsets_from_datasets", lambda *a, **k: calls.append(a) or read(*a, **k))

    class Queries(list):
        name, positives = "toy", [[0]]

    datamodule = CIRDataModule()
    datamodule.val_sets = [(Queries(["q0"]), ["g0", "g1"])]
    evaluation = Evaluation(EvaluationOptions(search=SearchConfig(sharded=True), eval_ks=[1]))
    checkpoint = ModelCheckpoint(monitor="val/toy/Recall@1", mode="max")
    trainer = SimpleNamespace(state=SimpleNamespace(fn=TrainerFn.FITTING), world_size=2, fast_dev_run=False,
                              checkpoint_callbacks=[checkpoint], callbacks=[checkpoint], limit_val_batches=1.0)
    module = SimpleNamespace(_trainer=trainer, trainer=trainer)
    evaluation.fit_start(trainer, datamodule)  # CIRModule.setup's two calls
    assert evaluation.connect(module, datamodule) is None
    assert len(calls) == 1
    Queries.candidates = [[0, 1]]  # CIRR's: still refused in fit, on the same read
    with pytest.raises(CIRConfigError, match="subset 'toy': rankings within candidates .* turn `search.sharded"):
        evaluation.fit_start(trainer, datamodule)
    assert len(calls) == 2


def test_a_backbone_of_one_s_own_lacking_a_part_is_named_when_the_module_is_built(backbone):
    from cir_lightning.backbones import Backbone

    class EmbedsOnly(Backbone):  # forward and embedding_dim, but no fingerprint and no collator
        def forward(self, inputs):
            return inputs["x"]

        @property
        def embedding_dim(self):
            return 2

    with pytest.raises(CIRModelError, match=r"^EmbedsOnly does not implement what a Backbone must: `fingerprint\(\)`: "
                                            r".*; `collator` \(set in `__init__`\)"):
        CIRModule(EmbedsOnly())
    with pytest.raises(CIRModelError, match=r"EmbedsOnly does not implement `fingerprint\(\)`"):
        EmbedsOnly().fingerprint()  # called directly, as a plain nn.Module: the same words
    CIRModule(backbone)  # every shipped backbone implements them all
