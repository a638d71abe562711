"""The app behind ``cir-lightning serve``: answers the page's requests, without any socket.

The page (``static/``: plain HTML, CSS and JavaScript; nothing is fetched from anywhere else) lets a
user upload a reference image or pick an indexed one, type how to change it, and see the top-K as a
grid; clicking a result makes it the next reference. ``SearchApp.respond`` answers one request
(``cir_lightning.serve.server`` puts it behind Python's ``ThreadingHTTPServer``). The app searches through
a *searcher*: any object with ``root``, ``relpaths`` and ``query(image, text, k)``, and optionally ``marks``
(see ``serve.searchers``), such as ``IndexSearcher`` over an ``ImageIndex`` and its backbone.

Routes: ``GET /`` and ``/static/<name>`` (the page), ``GET /api/info``, ``GET /api/images?filter=&limit=``
(indexed paths for the "Pick from index" grid, with the ``marks`` of those listed), ``GET /image/<relpath>`` (an indexed image below the root; nothing else is served),
``POST /api/search`` (JSON ``text``, ``k`` and ``relpath`` or ``upload``, a data URL; answered with the hits,
each with its ``mark``: a file gone or replaced since it was indexed, and the ``reference``: its ``relpath`` and
``mark``, or null for an upload). A refused request gets a 4xx with ``{"error": one line}``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import mimetypes
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from PIL import Image, UnidentifiedImageError

from cir_lightning.data.folder import image_suffixes
from cir_lightning.errors import CIRConfigError, CIRDataError, CIRError
from cir_lightning.pixels import to_rgb
from cir_lightning.serve.searchers import Searcher

MAX_BODY = 32 * 2**20
"""The largest request body accepted (an upload travels base64-encoded inside it)."""

MAX_UPLOAD_PIXELS = 64_000_000
"""Uploads with more pixels are refused from their header, before decoding (a decompression-bomb guard)."""

MAX_K = 1000
"""The most results one search returns (``serve -k`` and the page's own choice)."""


def check_first_k(k: int) -> int:
    """``serve -k``, the page's first k: from 1 to ``MAX_K`` (above, every search the page made was refused)."""
    if not 1 <= k <= MAX_K:
        raise CIRConfigError(f"`-k` must be from 1 to {MAX_K}, got {k}")
    return k

STATIC = {"index.html": "text/html", "serve.css": "text/css", "serve.js": "text/javascript"}


class Refused(Exception):
    """A request the app refuses: an HTTP status and a one-line message for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Response:
    """An answer: HTTP status, content type and body."""

    status: int
    content_type: str
    body: bytes

    @classmethod
    def json(cls, value: object, status: int = 200) -> Response:
        """A JSON answer.

        Example:
            >>> from cir_lightning.serve.app import Response
            >>> Response.json({"error": "no"}, 404).body
            b'{"error": "no"}'
        """
        return cls(status, "application/json", json.dumps(value).encode())


def decode_upload(data_url: object, name: str = "upload") -> Image.Image:
    """The RGB image in a ``data:`` URL sent by the page, or ``Refused`` (400) saying why not.

    Example:
        >>> from cir_lightning.serve.app import decode_upload
        >>> buffer = io.BytesIO()
        >>> Image.new("L", (4, 2)).save(buffer, "PNG")
        >>> decode_upload("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()).size
        (4, 2)
        >>> decode_upload("data:text/plain;base64,aGVsbG8=", "notes.txt")
        Traceback (most recent call last):
        ...
        cir_lightning.serve.app.Refused: the uploaded file `notes.txt` is not an image (not a format Pillow can read, or truncated)
    """
    if not isinstance(data_url, str) or not data_url.startswith("data:") or ";base64," not in data_url:
        raise Refused(400, f"the uploaded file `{name}` did not arrive as a base64 data URL")
    try:
        raw = base64.b64decode(data_url.split(",", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise Refused(400, f"the uploaded file `{name}` is not valid base64") from None
    too_large = f"the uploaded image `{name}` has more than {MAX_UPLOAD_PIXELS:,} pixels; shrink it first"
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if img.width * img.height > MAX_UPLOAD_PIXELS:
                raise Refused(400, too_large)
            img.load()
            return to_rgb(img, f"the uploaded image `{name}`")  # as indexed images: 16-bit ones scaled to 8
    except CIRDataError as err:
        raise Refused(400, str(err)) from None
    except Image.DecompressionBombError:  # Pillow's own limit, read from the header: far beyond ours
        raise Refused(400, too_large) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise Refused(400, f"the uploaded file `{name}` is not an image (not a format Pillow can read, "
                           "or truncated)") from None


class SearchApp:
    """The web app over a ``searcher``; ``respond`` answers one request without any socket.

    Args:
        searcher: see ``Searcher``.
        k: how many results the page asks for at first (the page can change it).

    Example:
        >>> from cir_lightning.serve.app import SearchApp
        >>> from types import SimpleNamespace
        >>> app = SearchApp(SimpleNamespace(root=Path("/photos"), relpaths=["a.jpg", "b/c.png"]), k=5)
        >>> json.loads(app.respond("GET", "/api/info").body)["count"]
        2
        >>> app.respond("GET", "/image/../etc/passwd").status
        403
    """

    def __init__(self, searcher: Searcher, k: int = 12) -> None:
        self.searcher, self.k = searcher, check_first_k(k)
        self.root, self.relpaths = Path(searcher.root).resolve(), list(searcher.relpaths)
        self._indexed = set(self.relpaths)
        self._lock = threading.Lock()  # one query at a time: the backbone is not made for concurrent calls

    def respond(self, method: str, target: str, body: bytes = b"", content_type: str = "") -> Response:
        """The answer to ``method target`` (a ``Refused`` becomes a 4xx with its message).

        Example:
            >>> from cir_lightning.serve.app import SearchApp
            >>> from types import SimpleNamespace
            >>> SearchApp(SimpleNamespace(root=Path("/p"), relpaths=[])).respond("GET", "/nowhere").status
            404
        """
        url = urlsplit(target)
        try:
            if method == "POST" and url.path == "/api/search":
                if content_type.split(";")[0].strip() != "application/json":
                    raise Refused(415, "send the search as JSON (Content-Type: application/json)")
                return Response.json(self.search(_json_object(body)))
            if method != "GET":
                raise Refused(405, f"{method} is not supported here")
            if url.path in ("/", "/index.html") or url.path.startswith("/static/"):
                return self._static(url.path.rsplit("/", 1)[-1] or "index.html")
            if url.path == "/api/info":
                return Response.json({"root": str(self.root), "count": len(self.relpaths), "k": self.k})
            if url.path == "/api/images":
                query = parse_qs(url.query)
                return Response.json(self.images(query.get("filter", [""])[0], query.get("limit", ["48"])[0]))
            if url.path.startswith("/image/"):
                path = self.image_path(unquote(url.path[len("/image/"):]))
                return Response(200, mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                                path.read_bytes())
            raise Refused(404, f"nothing at `{url.path}`")
        except Refused as err:
            return Response.json({"error": str(err)}, err.status)

    def _static(self, name: str) -> Response:
        if name not in STATIC:
            raise Refused(404, f"no page file `{name}`")
        data = resources.files("cir_lightning").joinpath("serve").joinpath("static").joinpath(name).read_bytes()
        return Response(200, f"{STATIC[name]}; charset=utf-8", data)

    def images(self, filter_text: str, limit: str | int = 48) -> dict[str, Any]:
        """The first ``limit`` indexed paths containing ``filter_text`` (case-insensitive), how many do, and the
        ``marks`` of those listed whose file is gone or replaced since indexing (as on the results).

        Example:
            >>> from cir_lightning.serve.app import SearchApp
            >>> from types import SimpleNamespace
            >>> SearchApp(SimpleNamespace(root=Path("/p"), relpaths=["a/x.png", "b.png"])).images("A/", 5)
            {'relpaths': ['a/x.png'], 'total': 1, 'marks': {}}
        """
        try:
            count = max(0, min(int(limit), 500))
        except ValueError:
            raise Refused(400, f"`limit` must be an integer, got {str(limit)[:40]!r}") from None
        needle = filter_text.lower()
        found = [p for p in self.relpaths if needle in p.lower()]
        return {"relpaths": found[:count], "total": len(found), "marks": self.marks(found[:count])}

    def marks(self, relpaths: list[str]) -> dict[str, str]:
        """What the searcher's ``marks`` says of ``relpaths`` (gone or replaced since embedded: as ``search``
        marks them); none from a searcher without ``marks``."""
        marks = getattr(self.searcher, "marks", None)
        return dict(marks(relpaths)) if callable(marks) and relpaths else {}

    def image_path(self, relpath: str) -> Path:
        """The file of an indexed image; ``Refused`` for any path outside the root (403) or not indexed (404).

        Example:
            >>> from cir_lightning.serve.app import SearchApp
            >>> from types import SimpleNamespace
            >>> SearchApp(SimpleNamespace(root=Path("/p"), relpaths=["a.png"])).image_path("../a.png")
            Traceback (most recent call last):
            ...
            cir_lightning.serve.app.Refused: `../a.png` is outside the index's root
        """
        pure = PurePosixPath(relpath)
        if pure.is_absolute() or ".." in pure.parts or "\\" in relpath or "\x00" in relpath:
            raise Refused(403, f"`{relpath[:200]}` is outside the index's root")
        if relpath not in self._indexed:
            raise Refused(404, f"`{relpath[:200]}` is not an indexed image")
        try:
            path = (self.root / relpath).resolve()
        except (RuntimeError, OSError):  # a loop of symbolic links, made after indexing
            raise Refused(404, f"`{relpath}` is indexed but its file is now a loop of symbolic links") from None
        # a link out of the root was indexed as the user linked it in (`index` follows links): shown if an image
        if not path.is_relative_to(self.root) and path.suffix.lower() not in image_suffixes():
            raise Refused(403, f"`{relpath}` leads outside the index's root, to a file that is not an image")
        if not path.is_file():
            raise Refused(404, f"`{relpath}` is indexed but its file is gone")
        return path

    def search(self, request: dict[str, Any]) -> dict[str, Any]:
        """The top-K for a search request: ``text``, ``k`` and ``relpath`` (indexed) or ``upload`` (data URL).
        Each hit has ``rank``, ``relpath``, ``score`` and ``mark``: None, or what the searcher's ``marks`` says of
        its file (``gone``, ``changed since indexed``); ``reference`` is the indexed reference's ``relpath`` and
        ``mark`` (the page badges it as a hit), None for an upload.

        Example:
            >>> from cir_lightning.serve.app import SearchApp
            >>> from types import SimpleNamespace
            >>> hit = SimpleNamespace(rank=1, relpath="a.png", score=0.5)
            >>> searcher = SimpleNamespace(root=Path("/p"), relpaths=["a.png"], query=lambda i, t, k: [hit])
            >>> SearchApp(searcher).search({"text": "red", "k": 3, "upload": "data:,"})
            Traceback (most recent call last):
            ...
            cir_lightning.serve.app.Refused: the uploaded file `upload` did not arrive as a base64 data URL
        """
        text, k = request.get("text", ""), request.get("k", self.k)
        if not isinstance(text, str) or len(text) > 2000:
            raise Refused(400, "`text` must be a string of at most 2000 characters")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
            raise Refused(400, f"`k` must be an integer from 1 to {MAX_K}, got {json.dumps(k)[:40]}")
        relpath = request["relpath"] if isinstance(request.get("relpath"), str) else None
        if relpath is not None:
            image = self._indexed_image(relpath)
        elif "upload" in request:
            image = decode_upload(request["upload"], str(request.get("name") or "upload")[:200])
        else:
            raise Refused(400, "choose a reference image: `relpath` of an indexed image or `upload`")
        try:
            with self._lock:
                hits = self.searcher.query(image, text, min(k, len(self.relpaths)))
        except CIRError as err:
            raise Refused(400, str(err).splitlines()[0]) from None
        looked_at = [str(h.relpath) for h in hits] + ([relpath] if relpath is not None else [])
        marked = self.marks(list(dict.fromkeys(looked_at)))  # the hits' and the reference's, in one look
        return {"hits": [{"rank": int(h.rank), "relpath": str(h.relpath), "score": float(h.score),
                          "mark": marked.get(str(h.relpath))} for h in hits],
                "reference": None if relpath is None else {"relpath": relpath, "mark": marked.get(relpath)}}

    def _indexed_image(self, relpath: str) -> Image.Image:
        from cir_lightning.data.images import load_image  # the data package is heavy: only when needed

        try:
            return load_image(self.image_path(relpath))
        except CIRError as err:
            raise Refused(400, str(err)) from None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested thousands of levels deep
        raise Refused(400, "the request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise Refused(400, "the request body must be a JSON object")
    return value
