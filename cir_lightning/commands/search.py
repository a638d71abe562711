"""``cir-lightning search INDEX --image REF.jpg --text "make it red" -k 10 [--show out.png]``.

Opens an index written by ``cir-lightning index`` (``ImageIndex``), rebuilds the model that made it,
embeds the reference image with the text and prints the ``k`` closest indexed images, best first, with
their scores (cosine similarity). When the reference is itself one of the indexed images it is left out
of the results (as composed-retrieval benchmarks do; ``--keep-reference`` keeps it). ``--show`` draws the
reference and the results (one whose file is gone since indexing as a tile saying so) into a PNG
(``cir_lightning.pictures``) whose text says what drew it: the index, the model's identity, the reference, the
text and ``k`` (``PIL.Image.open(path).text``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cir_lightning.commands import COMMANDS

if TYPE_CHECKING:
    from cir_lightning.image_index import ImageIndex

_AGAIN = "index the folder again (`index ... --reuse INDEX --out NEW` embeds only the new or changed images)"


def main(argv: Sequence[str]) -> None:
    """Search an index (see the module)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="cir-lightning search", description=COMMANDS["search"][1])
    parser.add_argument("index", help="an index folder written by `cir-lightning index`")
    parser.add_argument("--image", required=True, help="the reference image")
    parser.add_argument("--text", required=True, help='what to change in it ("make it red")')
    parser.add_argument("-k", type=int, default=10, help="how many results (default: 10)")
    parser.add_argument("--show", help="also draw the reference and the results into this PNG (must not exist)")
    parser.add_argument("--root", help="the indexed image folder's new place, when it was moved after indexing")
    parser.add_argument("--keep-reference", action="store_true",
                        help="keep the reference in the results when it is one of the indexed images")
    ns = parser.parse_args(list(argv)[1:])
    from cir_lightning.checks import positive_int
    from cir_lightning.data.images import DEFAULT_MAX_PIXELS, load_image
    from cir_lightning.errors import CIRConfigError
    from cir_lightning.files import check_writable
    from cir_lightning.image_index import GONE, ImageIndex
    from cir_lightning.writable import exists_error

    positive_int("-k", ns.k)
    if not ns.text.strip():  # as annotation files refuse an empty modification: a composed query needs one
        raise CIRConfigError("`--text` is empty: say what to change in the image (e.g. --text \"make it red\")")
    index = ImageIndex.open(ns.index, ns.root)
    show = Path(ns.show) if ns.show else None
    if show is not None:  # before the model is loaded
        if show.suffix.lower() != ".png":  # PNG bytes under another name
            raise CIRConfigError(f"`--show` writes a PNG: give a file name ending in .png, got `{show}`")
        if show.exists() or show.is_symlink():
            raise exists_error(show, "--show")
        check_writable(show.parent, "--show")
    reference = Path(ns.image)
    image = load_image(reference, index.info.get("max_short_edge"), "`--image`",
                       max_pixels=index.info.get("max_image_pixels", DEFAULT_MAX_PIXELS),
                       upright=bool(index.info.get("upright")))
    # the reference as indexed: by its own path (through a linked folder) or by the file it links to
    indexed = set(index.relpaths)
    names = [Path(os.path.relpath(p, index.root)).as_posix() for p in (os.path.abspath(reference),
                                                                         os.path.realpath(reference))]
    relpath = next((name for name in names if name in indexed), None)
    if relpath is None:  # a link to a file indexed under another name: the same real file, by its name or the link's
        real, basenames = os.path.realpath(reference), {reference.name, Path(os.path.realpath(reference)).name}
        relpath = next((p for p in index.relpaths if p.rsplit("/", 1)[-1] in basenames
                        and os.path.realpath(index.root / p) == real), None)
    exclude = [] if ns.keep_reference or relpath is None else [relpath]
    backbone = index.load_backbone()
    hits = index.query(backbone, image, ns.text, ns.k, exclude=exclude)
    print(f"{len(hits)} of {len(index.relpaths)} images below {index.root} for {_shown(reference)} + {ns.text!r}"
          + (f" (the reference itself, {_shown(relpath)}, left out: --keep-reference keeps it)" if exclude else ""))
    print(f"{'rank':>4}  {'score':>7}  path")
    marks = index.marks(hit.relpath for hit in hits)  # gone, or another photo under the same name
    gone = [hit.rank for hit in hits if marks.get(hit.relpath) == GONE]
    for hit in hits:
        mark = f"  ({marks[hit.relpath]})" if hit.relpath in marks else ""
        print(f"{hit.rank:>4}  {hit.score:>7.4f}  {_shown(hit.path)}{mark}")
    if gone:
        print(f"{len(gone)} of these images are gone since the index was built; {_AGAIN}",
              file=sys.stderr)
    if len(marks) > len(gone):  # ranked by the picture embedded then, not the one there now
        print(f"{len(marks) - len(gone)} of these images changed since the index was built (ranked as they were "
              f"then); {_AGAIN}", file=sys.stderr)
    if show is not None:
        print(f"picture written to {_draw(show, reference, ns.text, ns.k, hits, index, marks)}")


def _shown(path: object) -> str:
    r"""A path as one line of the table: a newline or other control character in a file name is escaped.

    Example:
        >>> _shown("photos/new\nline.png")
        'photos/new\\nline.png'
    """
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in str(path))


def _draw(path: Path, reference: Path, text: str, k: int, hits: Sequence, index: ImageIndex,
          marks: dict[str, str]) -> Path:
    """The reference and the results drawn into the PNG ``path``, with what drew them in its text (``picture_info``:
    the index's model identity; the index, its images' folder, the reference, the text and ``k``). A result whose
    file is gone (``marks``) is a tile saying so, with its path; one replaced since carries its mark as a badge."""
    from cir_lightning.data.images import load_image
    from cir_lightning.image_index import GONE
    from cir_lightning.pictures import (
        Hit,
        QueryRow,
        missing_tile,
        picture_info,
        retrieval_picture,
        save_picture,
    )

    gone = {h.path: _shown(h.relpath) for h in hits if marks.get(h.relpath) == GONE}
    changed = {h.relpath: marks[h.relpath] for h in hits if h.relpath in marks and h.path not in gone}
    row = QueryRow("your query", reference, "`--image`", text,
                   [Hit(h.relpath, h.path, str(index), h.score, False, changed.get(h.relpath, "")) for h in hits],
                   None, len(hits), has_targets=False)
    turn = bool(index.info.get("upright"))  # drawn as they were embedded: photos as viewed (EXIF orientation)
    picture = retrieval_picture([row], title=f"cir-lightning search: top {len(hits)}", top=max(1, len(hits)),
                                load=lambda path, source: missing_tile(gone[path], GONE) if path in gone
                                else load_image(path, None, source, upright=turn))
    info = {**picture_info("search", None, index.meta["model"]), "index": str(index.folder.absolute()),
            "root": str(index.root), "image": str(reference.absolute()), "text": text, "k": str(k)}
    return save_picture(picture, path, info=info)  # under the next free name if another run took `path` meanwhile
