"""The command lines README.md and docs/*.md show parse as written: every ``cir-lightning ...`` line of a code
block (and every inline one with its options) goes through the real entry point, ``cli.main``, and is stopped
right after its arguments are parsed (no model, data or download), so a renamed or misspelt subcommand, option
or value fails here; every ``configs/...`` file the pages name exists; every name their Python imports or spells
out in full (``cir_lightning.retrieval.load_embeddings``) is where they say, and docs/own-project.md's examples (In
your own Lightning project) run as written up to the Trainer (docs/evaluation.md's results-file example runs in
test_run_outputs.py)."""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
import sys
from pathlib import Path

import pytest

from cir_lightning import cli
from cir_lightning.cli_parser import CIRParser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("cir-lightning", ".venv/bin/cir-lightning")  # `python -m cir_lightning` is rewritten to the first
LIGHTNING = ("fit", "validate", "test", "predict")
# a `--config` outside configs/ is a file the page's previous command writes (`convert-fire-config IN train.yaml
# && cir-lightning fit --config train.yaml`) or a placeholder (`index ... --config CONFIG`): parsed with the demo's
STAND_IN_CONFIG = "configs/demo.yaml"
# the options a page names in prose with their values (`--model.backbone.init_args.lora.r 32`) are parsed as one
# command line of `fit` (`predict` for `--predictions.*`) with the demo's config, in the page's order (a later one
# replaces an earlier, as on a command line); a placeholder value stands for one the option takes
LIGHTNING_OPTIONS = ("--model.", "--data.", "--trainer.", "--predictions.")
PLACEHOLDERS = {"N": "2"}


class _Parsed(Exception):
    """Raised where a command has parsed its arguments, before it does anything."""

    def __init__(self, unparsed: list[str]) -> None:
        super().__init__(unparsed)
        self.unparsed = unparsed


def _code(text: str) -> list[tuple[str, str]]:
    """The page's code as (text, kind): fenced blocks ("session" when they show `$ ` prompts and output, else
    "block"), indented command lines ("block") and inline spans ("inline")."""
    fenced = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
    code = [(body, "session" if re.search(r"^\$ ", body, re.M) else "block") for body in fenced.findall(text)]
    prose = fenced.sub("", text)
    code += [(line, "block") for line in re.findall(r"^ {4}(cir-lightning .*)$", prose, re.M)]
    return code + [(" ".join(span.split()), "inline") for span in re.findall(r"`([^`]+)`", prose)]


def _argv(line: str) -> list[str]:
    """A shell line's words after the program, with `[...]` optional parts kept and `...` as a placeholder value."""
    words = [w.strip("[]") for w in shlex.split(line, comments=True)]
    argv: list[str] = []
    for word in words:
        if word == "...":
            if argv and argv[-1].startswith("--"):
                argv.append("X")  # `--data.init_args.data_dir ...`: some value
            continue  # `--queries ID ...`: more of the same
        argv.append(word)
    for i, word in enumerate(argv[:-1]):
        if word == "--config" and not argv[i + 1].startswith("configs/"):
            argv[i + 1] = STAND_IN_CONFIG
        elif word == "--config":
            argv[i + 1] = _expand(argv[i + 1])[0] if "<" in argv[i + 1] or "{" in argv[i + 1] else argv[i + 1]
    return argv


def _expand(template: str) -> list[str]:
    """The files a path template names: `<model>` is any folder or name, `{cirr,circo}` each of those."""
    parts = [p.split(",") for p in re.split(r"\{([^}]*)\}", re.sub(r"<[^>]*>", "*", template))]
    patterns = ["".join(choice) for choice in itertools.product(*parts)]
    return sorted({str(p.relative_to(ROOT)) for pattern in patterns for p in ROOT.glob(pattern)})


def documented_commands() -> list[tuple[str, list[str]]]:
    """(page, argv) of every command line shown, each once."""
    found: dict[tuple[str, ...], str] = {}
    for page in PAGES:
        prose: dict[str, list[str]] = {"fit": [], "predict": []}
        for text, kind in _code(page.read_text(encoding="utf-8")):
            for line in text.replace("\\\n", " ").replace("python -m cir_lightning", "cir-lightning").splitlines():
                line = line.strip()
                if kind == "session" and not line.startswith("$ "):
                    continue  # a command's output
                for part in line.removeprefix("$ ").split("&&"):
                    words = part.split()
                    if words and words[0] in PROGRAMS:
                        argv = _argv(" ".join(words[1:]))
                    elif len(words) > 1 and words[0] in LIGHTNING and "--config" in words:
                        argv = _argv(part)  # `fit --config configs/demo.yaml --trainer.max_epochs 1`
                    elif kind == "inline" and len(words) > 1 and words[0].startswith(LIGHTNING_OPTIONS):
                        if any(word.startswith("mypackage.") for word in words):
                            continue  # a class of the reader's own (`--model.loss mypackage.MyLoss`)
                        stage = "predict" if words[0].startswith("--predictions.") else "fit"
                        prose[stage] += [PLACEHOLDERS.get(word, word) for word in shlex.split(part)]
                        continue  # `--model.pictures N` in prose: all of a page's in one command line
                    else:
                        continue
                    if kind == "inline" and len(argv) < 2 and argv != ["--help"]:
                        continue  # prose naming a command (`cir-lightning validate`), not a command line
                    found.setdefault(tuple(argv), page.name)
        for stage, options in prose.items():
            if options:
                found.setdefault((stage, "--config", STAND_IN_CONFIG, *options), page.name)
    return [(page, list(argv)) for argv, page in found.items()]


def _parse(argv: list[str], monkeypatch: pytest.MonkeyPatch, built: dict | None = None) -> int | None:
    """Run ``cli.main(argv)`` up to the end of its argument parsing: None when it parsed, else the exit code.
    ``built`` keeps LightningCLI's parser (its fit / validate / test / predict parsers) for the next call."""
    parse_known_args, init, setup = (argparse.ArgumentParser.parse_known_args, CIRParser.__init__,
                                     cli.CIRLightningCLI.setup_parser)
    built = {} if built is None else built

    def parsed(self: argparse.ArgumentParser, args=None, namespace=None):  # the commands of cir_lightning.commands
        self.allow_abbrev = False
        _, unparsed = parse_known_args(self, args, namespace)
        raise _Parsed(unparsed)

    def exact(self: CIRParser, *args, **kwargs) -> None:  # a page's option is its full name, not a prefix of one
        init(self, *args, **kwargs)
        self.allow_abbrev = False

    def setup_once(self: cli.CIRLightningCLI, *args) -> None:  # the same parser every time: built once
        if not built:
            setup(self, *args)
            built.update(parser=self.parser, methods=self._subcommand_method_arguments)
        self.parser, self._subcommand_method_arguments = built["parser"], built["methods"]

    def stop(self: cli.CIRLightningCLI) -> None:  # LightningCLI: after parse_arguments, before loading anything
        raise _Parsed([])

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_known_args", parsed)  # jsonargparse overrides it: untouched
        patch.setattr(cli.CIRLightningCLI, "_parse_ckpt_path", stop)
        patch.setattr(CIRParser, "__init__", exact)
        patch.setattr(cli.CIRLightningCLI, "setup_parser", setup_once)
        try:
            cli.main(argv)
        except _Parsed as done:
            if done.unparsed:  # what argparse's parse_args refuses after parse_known_args
                print(f"not options of `{argv[0]}`: {' '.join(done.unparsed)}", file=sys.stderr)
                return 2
            return None
        except SystemExit as stopped:  # --help, --print_config: 0; a bad option: 2
            return stopped.code or None
    raise AssertionError(f"{argv} ran instead of stopping after its parsing")


def test_documented_command_lines_parse(monkeypatch, capsys):
    commands = documented_commands()
    subcommands = {argv[0] for _, argv in commands}
    assert len(commands) > 40  # the extraction still finds the pages' commands
    demo_prose = [argv for page, argv in commands if page == "demo.md" and argv[:3] == ["fit", "--config",
                                                                                       STAND_IN_CONFIG]]
    assert any("--model.backbone.init_args.lora.r" in argv for argv in demo_prose)  # and the options in prose
    assert {page for page, _ in commands} >= {"README.md", "training.md", "own-images.md", "evaluation.md"}
    assert {*LIGHTNING, "index", "search", "serve", "show", "convert-fire-config", "reproduce"} <= subcommands
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    failures, built = [], {}
    for page, argv in commands:
        code = _parse(argv, monkeypatch, built)
        if code is not None:
            error = capsys.readouterr().err.strip().splitlines()
            failures.append(f"{page}: cir-lightning {shlex.join(argv)}\n    exit {code}: {error[-1] if error else ''}")
    capsys.readouterr()
    assert not failures, "\n".join(failures)


def test_documented_parse_fails_on_a_renamed_option(monkeypatch, capsys):
    """The check is not vacuous: an option the parser lacks, or a value it refuses, stops the line."""
    assert _parse(["validate", "--config", "configs/demo.yaml", "--model.save_ranking", "true"], monkeypatch) == 2
    assert _parse(["fit", "--config", "configs/demo.yaml", "--model.lr_schedule", "cosin"], monkeypatch) == 2
    assert _parse(["index", "IMAGES", "--config", "c.yaml", "--out", "OUT", "--adapters", "A"], monkeypatch) == 2
    assert _parse(["search", "INDEX", "--image", "a.png", "--tex", "red"], monkeypatch) == 2
    capsys.readouterr()


def test_documented_config_files_exist():
    named = {m for page in PAGES for m in re.findall(r"\bconfigs/[\w/.<>{},*-]*\.yaml", page.read_text("utf-8"))}
    assert "configs/demo.yaml" in named
    missing = [path for path in sorted(named) if not _expand(path.replace("*", "<any>"))]
    assert not missing, f"named in the docs, not in the repository: {missing}"


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)


def _resolve(dotted: str) -> object:
    """The object a dotted name names: its longest importable module, then attributes."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            found = getattr(found, name)
        return found
    raise ModuleNotFoundError(dotted)


def documented_python_names() -> list[tuple[str, str]]:
    """(page, dotted name) of every name the pages import or name in full: the imports of every Python block and
    inline `from cir_lightning... import ...`, and every inline `cir_lightning.<module>.<name>`."""
    import ast

    found: set[tuple[str, str]] = set()
    for page in PAGES:
        for block in _python_blocks(page):
            for node in ast.walk(ast.parse(block)):
                if isinstance(node, ast.ImportFrom) and node.module:
                    found |= {(page.name, f"{node.module}.{alias.name}") for alias in node.names}
                elif isinstance(node, ast.Import):
                    found |= {(page.name, alias.name) for alias in node.names}
        for span in re.findall(r"`([^`]+)`", re.sub(r"^```.*?^```", "", page.read_text("utf-8"), flags=re.S | re.M)):
            for module, names in re.findall(r"from (cir_lightning[\w.]*) import ([\w, ]+)", span):
                found |= {(page.name, f"{module}.{name.strip()}") for name in names.split(",")}
            found |= {(page.name, name) for name in re.findall(r"\bcir_lightning(?:\.[A-Za-z_]\w*)+", span)}
    return sorted(found)


def test_documented_python_names_exist():
    """A name the pages import or spell out in full (`cir_lightning.retrieval.load_embeddings`) is where they say:
    a moved or renamed one fails here, not in a user's script."""
    names = documented_python_names()
    assert ("data.md", "cir_lightning.data.layouts.cirr.check_submission") in names  # the extraction still works
    assert len(names) > 25
    missing = []
    for page, name in names:
        try:
            _resolve(name)
        except (ImportError, AttributeError) as error:
            missing.append(f"{page}: {name} ({error})")
    assert not missing, "\n".join(missing)


def test_documented_python_names_fail_on_a_moved_name():
    with pytest.raises(AttributeError):
        _resolve(".".join(["cir_lightning.data", "cirr", "check_submission"]))  # a layout's name by its old path
    with pytest.raises(ModuleNotFoundError):
        _resolve("cir_lightning_missing.x")


def test_the_readme_s_own_project_examples_run(tiny_model_dir, monkeypatch):
    """docs/own-project.md's blocks (In your own Lightning project), run as written up to the Trainer (a stand-in that records
    what it is given): the backbone built from a model folder, `encode_query`'s embedding, the module, our
    DataModule, the callback with its search."""
    import lightning.pytorch as pl
    import torch
    from PIL import Image

    from cir_lightning.data import JsonlCIRDataModule
    from cir_lightning.module import CIRModule
    from cir_lightning.retrieval import RetrievalCallback

    class Trainer:
        def __init__(self, **options):
            self.options, self.calls = options, calls

        def fit(self, *args, **kwargs):
            self.calls.append(("fit", self.options, args, kwargs))

        validate = fit

    calls: list = []
    monkeypatch.setattr(pl, "Trainer", Trainer)
    page = ROOT / "docs" / "own-project.md"
    blocks = _python_blocks(page)
    [model] = [b for b in blocks if "HFMultimodalBackbone(" in b]
    [callback] = [b for b in blocks if "RetrievalCallback(" in b]
    scope = {"pil_image": Image.new("RGB", (40, 30), (200, 10, 10)), "your_module": "their module",
             "train_loader": "train", "query_loader": "queries", "gallery_loader": "gallery"}
    exec(compile(model.replace('"path/or/hub-name"', repr(str(tiny_model_dir))), str(page), "exec"), scope)
    assert scope["emb"].shape == (1, scope["backbone"].embedding_dim)
    assert torch.allclose(scope["emb"].norm(dim=-1), torch.ones(1))  # L2-normalised, as the comment says
    (_, _, (module, data), _), = calls
    assert isinstance(module, CIRModule)
    assert isinstance(data, JsonlCIRDataModule)
    calls.clear()
    exec(compile(callback, str(page), "exec"), scope)
    assert [call[2] for call in calls] == [("their module", "train", ["queries", "gallery"]), ("their module",)]
    [retrieval] = calls[0][1]["callbacks"]
    assert isinstance(retrieval, RetrievalCallback)
    assert isinstance(calls[1][3]["datamodule"], JsonlCIRDataModule)
