"""``cir-lightning serve``: a small local web page for iterative composed image retrieval over an index.

Upload a reference image or pick an indexed one, type how to change it, see the top-K as a grid, click a
result to make it the next reference. The page is plain HTML, CSS and JavaScript (``static/``, shipped
with the package; no build step, nothing fetched from the internet), served by Python's standard library.
``SearchApp`` (``app.py``) answers requests over any ``Searcher``; ``make_server`` (``server.py``) binds it,
to localhost by default; ``IndexSearcher`` (``searchers.py``) makes an ``ImageIndex`` and its backbone a
``Searcher``. A result whose file is gone or was replaced since it was indexed is marked, as ``search`` marks it.

Example:
    >>> from cir_lightning.serve import SearchApp, make_server
    >>> from types import SimpleNamespace
    >>> server = make_server("127.0.0.1", 0, SearchApp(SimpleNamespace(root=".", relpaths=["a.png"])))
    >>> server.app.images("")
    {'relpaths': ['a.png'], 'total': 1, 'marks': {}}
    >>> server.server_close()
"""

from cir_lightning.serve.app import Refused, Response, SearchApp, decode_upload
from cir_lightning.serve.searchers import IndexSearcher, Searcher
from cir_lightning.serve.server import make_server

__all__ = ["IndexSearcher", "Refused", "Response", "SearchApp", "Searcher", "decode_upload", "make_server"]
