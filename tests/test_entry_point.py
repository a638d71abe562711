"""The ``cir-lightning`` entry point (``cir_lightning.__main__``): the libraries' objects frozen out of the
garbage collector's way, and an exit that still finalizes garbage, runs ``atexit`` and keeps exit codes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# runs the real entry point with `cli.main` replaced by a probe (the libraries are imported for real)
PROBE = textwrap.dedent("""
    import atexit, gc, sys
    from pathlib import Path
    out = Path(sys.argv[1])

    class Cycle:
        def __del__(self):
            (out / "finalized").write_text("yes")

    def probe():
        import torch  # imported by cli already: frozen with it
        (out / "during").write_text(f"{gc.isenabled()} {gc.get_freeze_count()}")
        garbage = Cycle()
        garbage.me = garbage  # a reference cycle: only the collector frees it
        del garbage
        atexit.register(lambda: (out / "atexit").write_text("yes"))
        if sys.argv[2] != "0":
            sys.exit(int(sys.argv[2]))

    import cir_lightning.cli
    cir_lightning.cli.main = probe
    from cir_lightning.__main__ import main
    main()
""")


@pytest.mark.parametrize("code", [0, 2])
def test_entry_point_freezes_libraries_and_exits_cleanly(tmp_path, code):
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path), str(code)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == code, done.stderr[-2000:]
    enabled, frozen = (tmp_path / "during").read_text().split()
    assert enabled == "True"  # the collector runs during the command
    assert int(frozen) > 100_000  # torch, Lightning, transformers: out of its way
    assert (tmp_path / "finalized").read_text() == "yes"  # garbage left at the end is still finalized
    assert (tmp_path / "atexit").read_text() == "yes"


def test_console_script_is_the_entry_point():
    assert 'cir-lightning = "cir_lightning.__main__:main"' in (ROOT / "pyproject.toml").read_text()
    script = Path(sys.executable).parent / "cir-lightning"
    if script.is_file():  # an installed checkout (CI, scripts/setup.sh): the script pip wrote calls it
        assert "from cir_lightning.__main__ import main" in script.read_text()
