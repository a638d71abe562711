"""``load_torch_file`` on files that are not checkpoints: one ``CIRModelError`` line, whatever torch's unpickler hit."""

from __future__ import annotations

import pytest

from cir_lightning.errors import CIRModelError
from cir_lightning.torch_files import load_torch_file


@pytest.mark.parametrize("content", [b"hello\n", b"h\x00\x00\x00", b"q\xff\xff\xff\xff", b"}q\x00", b"\x00" * 64,
                                     b"PK\x03\x04 not a zip"])
def test_bytes_that_are_no_checkpoint_are_one_line(tmp_path, content):
    path = tmp_path / "weights.ckpt"  # text and bytes that torch's pickle reader takes for opcodes, then trips on
    path.write_bytes(content)
    with pytest.raises(CIRModelError) as info:
        load_torch_file(path, what="`--ckpt_path`")
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
