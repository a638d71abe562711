"""A Ctrl-C or a SIGTERM ends every command with 130 / 143 and one line saying what is kept: only finished files,
or, for an index build, the images embedded so far (the rerun continues)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from cir_lightning.cli import main
from tests.test_cli import CONF
from tests.test_faults import _common, _everything


def _ctrl_c_after(monkeypatch, cls, method: str, calls: int = 1) -> None:
    """Press Ctrl-C (a real SIGINT to this process) once ``cls.method`` has run ``calls`` times."""
    original, seen = getattr(cls, method), []

    def then_ctrl_c(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append(1)
        if len(seen) == calls:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(cls, method, then_ctrl_c)


@pytest.mark.parametrize("stage", ["validate", "predict"])
def test_ctrl_c_ends_validate_and_predict_with_130_one_line_and_nothing_half_written(stage, tiny_model_dir, tmp_path,
                                                                                 monkeypatch, capsys):
    from cir_lightning.backbones.base import Backbone

    _ctrl_c_after(monkeypatch, Backbone, "embed_batch")
    with pytest.raises(SystemExit) as exit_info:
        main([stage, *_common(tiny_model_dir, tmp_path), "--model.embedding_cache", str(tmp_path / "cache")])
    assert exit_info.value.code == 130  # 128 + SIGINT (Lightning exits with 1, as for an error)
    assert capsys.readouterr().err.strip().endswith(
        "cir-lightning: stopped by Ctrl-C; files being written were removed, nothing half-written is left")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Lightning left it ignored
    left = _everything(tmp_path / "run")
    assert not [p for p in left if "predictions" in p or "results" in p or Path(p).name.startswith(".")]
    assert not (tmp_path / "cache").exists() or _everything(tmp_path / "cache") == set()


def test_ctrl_c_during_an_index_build_keeps_what_was_embedded_and_the_rerun_continues(tiny_model_dir, synthetic_root,
                                                                                    tmp_path, monkeypatch, capsys):
    from cir_lightning.backbones.base import Backbone

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in sorted(os.listdir(synthetic_root / "images"))[:6]:
        (photos / name).write_bytes((synthetic_root / "images" / name).read_bytes())
    args = ["index", str(photos), "--config", str(CONF), "--model.backbone.init_args.model_name_or_path",
            str(tiny_model_dir), "--out", str(tmp_path / "index"), "--batch-size", "2"]
    with monkeypatch.context() as patch:
        _ctrl_c_after(patch, Backbone, "embed_batch", calls=2)
        with pytest.raises(SystemExit) as exit_info:
            main(args)
    assert exit_info.value.code == 130
    assert "stopped by Ctrl-C; the images embedded so far are kept: run the same command again to continue" in \
        capsys.readouterr().err
    assert not (tmp_path / "index").exists()
    main(args)
    assert "resuming: 2 of 6 images were embedded by an earlier run" in capsys.readouterr().out
    assert (tmp_path / "index" / "meta.json").is_file()


def test_ctrl_c_outside_lightning_is_one_line_not_a_traceback(monkeypatch, capsys):
    import cir_lightning.cli as cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "check_config_files", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", str(CONF)])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == ("cir-lightning: stopped by Ctrl-C; files being written were removed, nothing "
                                       "half-written is left\n")


@pytest.mark.parametrize(("command", "kept"), [
    ("index", "the images embedded so far are kept: run the same command again to continue"),
    ("predict", "files being written were removed, nothing half-written is left"),
    ("fit", "`fit --ckpt_path last` resumes from its newest checkpoint")])
def test_sigterm_ends_every_command_with_143_and_what_is_kept(command, kept, capsys):
    """The predict and index writers stopped on SIGTERM with a bare SystemExit carrying their text: status 1, an
    error's; index's line of what is kept was never used for SIGTERM."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from cir_lightning.interrupts import stops

    with pytest.raises(SystemExit) as exit_info, stops("cir-lightning", command):
        raise SIGTERMException
    assert exit_info.value.code == 143
    assert capsys.readouterr().err == f"cir-lightning: stopped by SIGTERM; {kept}\n"


def test_ctrl_c_in_a_bgevl_script_is_one_line_and_130(monkeypatch, capsys):
    """BGE-VL's scripts were not wrapped: Ctrl-C printed a traceback."""
    from cir_lightning.commands import bgevl

    def interrupted(args, task):
        raise KeyboardInterrupt

    monkeypatch.setattr(bgevl, "run", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        bgevl.main_circo(["--image_dir", "x"])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == ("eval_circo.py: stopped by Ctrl-C; files being written were removed, nothing "
                                       "half-written is left\n")
