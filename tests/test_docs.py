"""The command lines README.md and docs/*.md show parse as written: every ``cir-lightning ...`` line of a code
block (and every inline one with its options) goes through the real entry point, ``cli.main``, and is stopped
right after its arguments are parsed (no model, data or download), so a renamed or misspelt subcommand, option
or value fails here; every ``configs/...`` file the pages name exists."""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
import sys
from pathlib import Path

import pytest

from cir_lightning import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("cir-lightning", ".venv/bin/cir-lightning")  # `python -m cir_lightning` is rewritten to the first
LIGHTNING = ("fit", "validate", "test", "predict")
# a `--config` outside configs/ is a file the page's previous command writes (`convert-fire-config IN train.yaml
# && cir-lightning fit --config train.yaml`) or a placeholder (`index ... --config CONFIG`): parsed with the demo's
STAND_IN_CONFIG = "configs/demo.yaml"


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
                    else:
                        continue
                    if kind == "inline" and len(argv) < 2 and argv != ["--help"]:
                        continue  # prose naming a command (`cir-lightning validate`), not a command line
                    found.setdefault(tuple(argv), page.name)
    return [(page, list(argv)) for argv, page in found.items()]


def _parse(argv: list[str], monkeypatch: pytest.MonkeyPatch, built: dict | None = None) -> int | None:
    """Run ``cli.main(argv)`` up to the end of its argument parsing: None when it parsed, else the exit code.
    ``built`` keeps LightningCLI's parser (its fit / validate / test / predict parsers) for the next call."""
    parse_known_args, init, setup = (argparse.ArgumentParser.parse_known_args, cli._Parser.__init__,
                                     cli.CIRLightningCLI.setup_parser)
    built = {} if built is None else built

    def parsed(self: argparse.ArgumentParser, args=None, namespace=None):  # the commands of cir_lightning.commands
        self.allow_abbrev = False
        _, unparsed = parse_known_args(self, args, namespace)
        raise _Parsed(unparsed)

    def exact(self: cli._Parser, *args, **kwargs) -> None:  # a page's option is its full name, not a prefix of one
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
        patch.setattr(cli._Parser, "__init__", exact)
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
