"""``cir-lightning serve INDEX``: a local web page for iterative search over an index folder."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cir_lightning.commands import COMMANDS
from cir_lightning.errors import CIRConfigError, CIRFileError
from cir_lightning.messages import MISSING


def main(argv: Sequence[str]) -> None:
    """Serve the page for ``argv[1:]`` (``INDEX [--host H] [--port P] [-k K]``) until Ctrl+C.

    The port is taken before the model loads, so a port in use fails at once; requests that arrive while
    the model loads wait for it.

    Example:
        >>> from cir_lightning.commands.serve import main
        >>> main(["serve", "/no/such/index"])
        Traceback (most recent call last):
        ...
        cir_lightning.errors.CIRFileError: `INDEX`: `/no/such/index` does not exist (build one with `cir-lightning index IMAGE_FOLDER`)
    """
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="cir-lightning serve", description=COMMANDS["serve"][1])
    parser.add_argument("index", help="an index folder written by `cir-lightning index`")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only; the page has no login)")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on (default: 8765; 0: any free one)")
    parser.add_argument("--root", help="the indexed image folder's new place, when it was moved after indexing")
    parser.add_argument("-k", type=int, default=12, help="how many results the page shows at first (default: 12)")
    ns = parser.parse_args(argv[1:])
    folder = Path(ns.index)
    if not folder.is_dir():
        problem = MISSING if not folder.exists() else "is not a folder"
        raise CIRFileError(f"`INDEX`: `{folder}` {problem} (build one with `cir-lightning index IMAGE_FOLDER`)")
    from cir_lightning.serve.app import check_first_k

    check_first_k(ns.k)  # before the model loads
    if not 0 <= ns.port <= 65535:
        raise CIRConfigError(f"`--port` must be from 0 to 65535, got {ns.port}")
    from cir_lightning.serve import IndexSearcher, SearchApp, make_server

    server = make_server(ns.host, ns.port)
    try:
        from cir_lightning.image_index import ImageIndex

        index = ImageIndex.open(folder, ns.root)
        server.app = SearchApp(IndexSearcher(index, index.load_backbone()), k=ns.k)  # type: ignore[attr-defined]
        host, port = server.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        print(f"cir-lightning serve: {len(index.relpaths):,} images below {index.root}\n"
              f"  open http://{shown}:{port}/ in a browser (Ctrl+C stops)", flush=True)
        if ns.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"  note: listening on {ns.host}: anyone who can reach it can search and see these images",
                  file=sys.stderr)
        server.serve_forever()
    except KeyboardInterrupt:
        print("cir-lightning serve: stopped")
    finally:
        server.server_close()
