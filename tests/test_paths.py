"""``paths.resolved``: a loop of symbolic links is one line naming the option, whatever Python's ``resolve`` does."""

from __future__ import annotations

from pathlib import Path

import pytest

from cir_lightning.errors import CIRFileError
from cir_lightning.paths import resolved


@pytest.mark.parametrize("python", ["<=3.12 raises", ">=3.13 returns quietly"])
def test_a_loop_of_links_is_one_line_naming_the_option(tmp_path, monkeypatch, python):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    if python.startswith(">="):  # Python 3.13's non-strict resolve: a path inside the loop, no error
        monkeypatch.setattr(Path, "resolve", lambda self, strict=False: Path(self).absolute())
    with pytest.raises(CIRFileError, match=r"^`--root`: `.*/loop/photos` leads into a loop of symbolic links$"):
        resolved(loop / "photos", "--root")


def test_a_path_that_does_not_exist_yet_is_resolved(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert resolved(tmp_path / "link" / "new" / "out", "--out") == (tmp_path / "real" / "new" / "out").resolve()
