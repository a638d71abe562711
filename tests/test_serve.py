"""``cir-lightning serve``: the app answered in-process, the server over a socket, the page in headless Chromium.

The in-process tests use a searcher that records what it was asked; the browser test searches a dozen
drawn images with the tiny real backbone (``backbone`` fixture) through the page, end to end.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import socket
import socketserver
import struct
import sys
import threading
import types
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from cir_lightning.cli import main
from cir_lightning.errors import CIRConfigError
from cir_lightning.files import write_atomic
from cir_lightning.serve import SearchApp, make_server

COLOURS = {"red": (220, 50, 47), "green": (60, 170, 80), "blue": (40, 100, 220), "gold": (230, 180, 30)}
SHAPES = ("circle", "square", "triangle")
SCREENSHOT = Path("/tmp/serve_screenshot.png")


def draw(colour: tuple[int, int, int], shape: str, size: int = 96) -> Image.Image:
    img = Image.new("RGB", (size, size), (24, 26, 32))
    box, pen = (size // 5, size // 5, size - size // 5, size - size // 5), ImageDraw.Draw(img)
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "square":
        pen.rectangle(box, fill=colour)
    else:
        pen.polygon([(size // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    return img


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def data_url(raw: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64," + base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    """``<tmp>/photos/<colour>/<shape>.png`` (12 images); beside the root, a secret file and an image that a
    symbolic link inside the root points to."""
    tmp = tmp_path_factory.mktemp("serve")
    for name, colour in COLOURS.items():
        for shape in SHAPES:
            (tmp / "photos" / name).mkdir(parents=True, exist_ok=True)
            draw(colour, shape).save(tmp / "photos" / name / f"{shape}.png")
    (tmp / "secret.txt").write_text("not for the web")
    draw((255, 255, 255), "circle").save(tmp / "outside.png")
    (tmp / "photos" / "link.png").symlink_to(tmp / "outside.png")
    (tmp / "photos" / "sneaky.png").symlink_to(tmp / "secret.txt")
    draw((0, 0, 0), "square").save(tmp / "photos" / "unindexed.png")
    return tmp / "photos"


def indexed(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.png"))


@dataclass(frozen=True)
class Hit:
    rank: int
    path: Path
    relpath: str
    score: float


class RecordingSearcher:
    """Ranks the indexed images in order with falling scores, and records each query."""

    def __init__(self, root: Path, relpaths: list[str]) -> None:
        self.root, self.relpaths, self.calls = root, relpaths, []

    def query(self, image: Image.Image, text: str, k: int) -> list[Hit]:
        self.calls.append((image.size, image.mode, text, k))
        return [Hit(i + 1, self.root / p, p, 1.0 - i / 10) for i, p in enumerate(self.relpaths[:k])]


QUERY_TEXT = "make it blue"


def query_image() -> Image.Image:
    """The reference the marked-index tests upload (the browser test too): not an indexed image."""
    return draw(COLOURS["red"], "circle", size=120)


@pytest.fixture(scope="module")
def marked_index(gallery, tiny_model_dir, tmp_path_factory):
    """An index of a copy of the gallery, then the first result for ``query_image`` + ``QUERY_TEXT`` replaced by
    another picture under its name and the second deleted: ``(index folder, {relpath: mark})``."""
    from cir_lightning.image_index import ImageIndex
    from tests.test_cli import CONF

    tmp = tmp_path_factory.mktemp("marked")
    for relpath in indexed(gallery):
        (tmp / "photos" / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(gallery / relpath, tmp / "photos" / relpath)
    main(["index", str(tmp / "photos"), "--config", str(CONF), "--out", str(tmp / "index"),
          "--model.backbone.init_args.model_name_or_path", str(tiny_model_dir)])
    index = ImageIndex.open(tmp / "index")
    first, second = index.query(index.load_backbone(), query_image(), QUERY_TEXT, k=2)
    draw((250, 250, 250), "triangle", size=64).save(first.path)  # another photo under the same name
    second.path.unlink()
    return tmp / "index", {first.relpath: "changed since indexed", second.relpath: "gone"}


@pytest.fixture
def app(gallery):
    relpaths = [*indexed(gallery), "link.png"]  # a link out of the root, to an image
    return SearchApp(RecordingSearcher(gallery, relpaths), k=5)


def get(app: SearchApp, target: str) -> tuple[int, dict]:
    response = app.respond("GET", target)
    return response.status, json.loads(response.body) if response.content_type == "application/json" else {}


def post(app: SearchApp, request: object, content_type: str = "application/json") -> tuple[int, dict]:
    response = app.respond("POST", "/api/search", json.dumps(request).encode(), content_type)
    return response.status, json.loads(response.body)


def test_the_page_and_the_index_are_served(app, gallery):
    page = app.respond("GET", "/")
    assert page.status == 200
    assert page.content_type.startswith("text/html")
    assert b'src="/static/serve.js"' in page.body
    assert b"http" not in page.body.replace(b"http-equiv", b"")
    assert app.respond("GET", "/static/serve.css").content_type.startswith("text/css")
    assert get(app, "/static/app.py")[0] == 404
    assert get(app, "/api/info")[1] == {"root": str(gallery.resolve()), "count": 13, "k": 5}
    assert get(app, "/api/images?filter=BLUE&limit=2")[1] == {"relpaths": ["blue/circle.png", "blue/square.png"],
                                                             "total": 3, "marks": {}}  # a searcher without marks
    image = app.respond("GET", "/image/gold/triangle.png")
    assert (image.status, image.content_type) == (200, "image/png")
    assert image.body == (gallery / "gold" / "triangle.png").read_bytes()
    assert app.respond("GET", "/image/red%2Fcircle.png").body == (gallery / "red" / "circle.png").read_bytes()


@pytest.mark.parametrize(("target", "status"), [
    ("/image/../secret.txt", 403),
    ("/image/%2e%2e/secret.txt", 403),
    ("/image/red/../../outside.png", 403),
    ("/image//etc/passwd", 403),
    ("/image/%2Fetc%2Fpasswd", 403),
    ("/image/red\\..\\..\\secret.txt", 403),
    ("/image/unindexed.png", 404),  # inside the root, but not an indexed image
    ("/image/red/nothing.png", 404),
])
def test_only_indexed_images_inside_the_root_are_served(app, target, status):
    code, body = get(app, target)
    assert code == status
    assert "\n" not in body["error"]
    assert ("outside the index's root" in body["error"]) == (status == 403)


def test_an_indexed_image_linked_in_from_outside_the_root_is_shown_as_index_embedded_it(app, gallery):
    """`index` follows links (a linked photo is searched like a copied one): the page showed their results as
    broken thumbnails and refused to search from them."""
    image = app.respond("GET", "/image/link.png")
    assert (image.status, image.body) == (200, (gallery.parent / "outside.png").read_bytes())
    # a link out of the root to anything but an image is never served, even when listed as indexed
    listed = SearchApp(RecordingSearcher(gallery, [*indexed(gallery), "sneaky.png"]), k=5)
    code, body = get(listed, "/image/sneaky.png")
    assert code == 403
    assert body["error"] == "`sneaky.png` leads outside the index's root, to a file that is not an image"


def test_a_search_from_an_indexed_image_or_an_upload(app, gallery):
    code, body = post(app, {"text": "make it red", "k": 3, "relpath": "blue/square.png"})
    assert code == 200
    assert [h["relpath"] for h in body["hits"]] == indexed(gallery)[:3]
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3]
    assert [h["mark"] for h in body["hits"]] == [None] * 3  # a searcher without `marks`: nothing to mark
    upload = png_bytes(draw((1, 2, 3), "circle", size=40).convert("L"))
    code, body = post(app, {"text": "as a square", "k": 50, "upload": data_url(upload), "name": "mine.png"})
    assert code == 200
    assert len(body["hits"]) == 13
    assert app.searcher.calls == [((96, 96), "RGB", "make it red", 3), ((40, 40), "RGB", "as a square", 13)]


def test_results_whose_files_are_gone_or_replaced_since_indexing_are_marked_as_search_marks_them(marked_index):
    """The page showed a replaced photo as if it were what was embedded (``search`` marked it, ``serve`` did not)."""
    from cir_lightning.image_index import ImageIndex
    from cir_lightning.serve import IndexSearcher

    folder, marks = marked_index
    index = ImageIndex.open(folder)
    app = SearchApp(IndexSearcher(index, index.load_backbone()), k=5)
    code, body = post(app, {"text": QUERY_TEXT, "k": 12, "upload": data_url(png_bytes(query_image()))})
    assert code == 200
    assert len(body["hits"]) == 12
    assert {h["relpath"]: h["mark"] for h in body["hits"] if h["mark"] is not None} == marks
    assert [h["mark"] for h in body["hits"][:2]] == ["changed since indexed", "gone"]
    assert index.marks(h["relpath"] for h in body["hits"]) == marks  # what `search` prints, from the same place
    # searching from the gone one is refused in one line; from the replaced one, its file as it is now
    gone, changed = sorted(marks, key=marks.get, reverse=True)
    assert post(app, {"text": "red", "relpath": gone}) == (404, {"error": f"`{gone}` is indexed but its file is gone"})
    assert post(app, {"text": "red", "relpath": changed})[0] == 200


def test_a_search_from_an_indexed_image_says_the_references_mark(marked_index):
    """A reference picked from the index that was replaced since was searched from without a word in the answer
    (its hits were marked, the reference was not: the page's reference panel showed no badge)."""
    from cir_lightning.image_index import ImageIndex
    from cir_lightning.serve import IndexSearcher

    folder, marks = marked_index
    index = ImageIndex.open(folder)
    app = SearchApp(IndexSearcher(index, index.load_backbone()), k=5)
    changed = next(p for p, m in marks.items() if m == "changed since indexed")
    unmarked = next(p for p in index.relpaths if p not in marks)
    code, body = post(app, {"text": QUERY_TEXT, "k": 3, "relpath": changed})
    assert code == 200
    assert body["reference"] == {"relpath": changed, "mark": "changed since indexed"}
    assert post(app, {"text": QUERY_TEXT, "k": 3, "relpath": unmarked})[1]["reference"] == {"relpath": unmarked,
                                                                                           "mark": None}
    upload = post(app, {"text": QUERY_TEXT, "k": 3, "upload": data_url(png_bytes(query_image()))})[1]
    assert upload["reference"] is None  # an upload was never indexed: nothing to mark


def test_the_pick_grid_marks_files_gone_or_replaced_since_indexing(marked_index):
    """The "Pick from index" grid listed a gone file as a broken image and a replaced one as if it were what was
    embedded; each listed path now comes with its mark, as the results do (only those listed are looked at)."""
    from cir_lightning.image_index import ImageIndex
    from cir_lightning.serve import IndexSearcher

    folder, marks = marked_index
    index = ImageIndex.open(folder)
    looked_at = []

    class Watched(IndexSearcher):
        def marks(self, relpaths):
            looked_at.append(list(relpaths))
            return super().marks(relpaths)

    app = SearchApp(Watched(index, backbone=None), k=5)
    code, body = get(app, "/api/images?filter=&limit=48")
    assert (code, body["total"], body["marks"]) == (200, 12, marks)
    assert body["relpaths"] == index.relpaths
    gone = next(p for p, m in marks.items() if m == "gone")
    unmarked = next(p for p in index.relpaths if p not in marks)
    assert get(app, f"/api/images?filter={gone}")[1] == {"relpaths": [gone], "total": 1, "marks": {gone: "gone"}}
    assert get(app, f"/api/images?filter={unmarked}")[1]["marks"] == {}
    assert get(app, "/api/images?filter=&limit=3")[1]["marks"] == {p: m for p, m in marks.items()
                                                                   if p in index.relpaths[:3]}
    assert get(app, "/api/images?filter=nothing-like-this")[1] == {"relpaths": [], "total": 0, "marks": {}}
    # only the paths listed are looked at (the page's 48 of a big index: never a stat of every file)
    assert looked_at == [index.relpaths, [gone], [unmarked], index.relpaths[:3]]


@pytest.mark.parametrize(("request_body", "status", "words"), [
    ({"text": "red", "upload": data_url(b"hello, world", "text/plain"), "name": "notes.txt"}, 400,
     "the uploaded file `notes.txt` is not an image"),
    ({"text": "red", "upload": data_url(png_bytes(draw((9, 9, 9), "circle"))[:60]), "name": "cut.png"}, 400,
     "`cut.png` is not an image"),
    ({"text": "red", "upload": "data:image/png;base64,@@@"}, 400, "not valid base64"),
    ({"text": "red"}, 400, "choose a reference image"),
    ({"text": "red", "k": 0, "relpath": "red/circle.png"}, 400, "`k` must be an integer from 1 to 1000, got 0"),
    ({"text": ["red"], "relpath": "red/circle.png"}, 400, "`text` must be a string"),
    ({"text": "red", "relpath": "../outside.png"}, 403, "outside the index's root"),
    ({"text": "red", "relpath": "red/nothing.png"}, 404, "not an indexed image"),
    ([1, 2], 400, "must be a JSON object"),
    ({"text": "red", "upload": data_url(png_header(100_000, 100_000)), "name": "huge.png"}, 400,
     "the uploaded image `huge.png` has more than 64,000,000 pixels; shrink it first"),
    ({"text": "red", "upload": data_url(png_header(9_000, 8_000)), "name": "big.png"}, 400,
     "the uploaded image `big.png` has more than 64,000,000 pixels"),
])
def test_bad_searches_get_one_clear_line(app, request_body, status, words):
    code, body = post(app, request_body)
    assert (code, "\n" in body["error"]) == (status, False)
    assert words in body["error"]
    assert app.searcher.calls == []


def test_requests_that_are_not_searches_are_refused(app):
    assert post(app, {"text": "red"}, content_type="text/plain")[0] == 415
    response = app.respond("POST", "/api/search", b"{not json", "application/json")
    assert (response.status, json.loads(response.body)["error"]) == (400, "the request body is not valid JSON")
    deep = b"[" * 100_000 + b"]" * 100_000  # deeper than Python's recursion limit
    response = app.respond("POST", "/api/search", deep, "application/json")
    assert (response.status, json.loads(response.body)["error"]) == (400, "the request body is not valid JSON")
    assert app.respond("DELETE", "/api/info").status == 405
    assert get(app, "/api/images?limit=many")[0] == 400


def _request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Security-Policy"), response.read()
    finally:
        connection.close()


def test_a_browser_that_goes_away_mid_request_leaves_no_trace_on_the_console(capsys):
    server = make_server("127.0.0.1", 0)
    try:
        for err, printed in ((ConnectionResetError(104, "Connection reset by peer"), False),
                             (BrokenPipeError(32, "Broken pipe"), False), (KeyError("a bug"), True)):
            try:
                raise err
            except Exception:  # noqa: BLE001 - what socketserver hands to handle_error
                server.handle_error(None, ("127.0.0.1", 1))
            assert ("Traceback" in capsys.readouterr().err) is printed  # a bug of ours is still shown
    finally:
        server.server_close()


def test_the_server_answers_only_to_localhost_and_refuses_huge_bodies(app):
    server = make_server("127.0.0.1", 0)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert _request(port, "GET", "/api/info")[0] == 503  # the model is still loading
        server.app = app
        status, policy, body = _request(port, "GET", "/api/info")
        assert (status, json.loads(body)["count"]) == (200, 13)
        assert "default-src 'self'" in policy
        status, _, body = _request(port, "GET", "/api/info", headers={"Host": "attacker.example:80"})
        assert (status, json.loads(body)["error"]) == (403, "this server answers only to localhost")
        status, _, body = _request(port, "POST", "/api/search", b"{}",
                                   {"Content-Type": "application/json", "Content-Length": str(2**30)})
        assert status == 413
        assert "at most 32 MiB" in json.loads(body)["error"]
        status, _, body = _request(port, "POST", "/api/search", json.dumps({"relpath": "red/circle.png"}).encode(),
                                   {"Content-Type": "application/json"})
        assert status == 200
        assert len(json.loads(body)["hits"]) == 5
    finally:
        server.shutdown()
        server.server_close()


def test_the_command_refuses_a_missing_index_and_a_port_in_use(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(tmp_path / "no-index")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.splitlines()[0] == f"cir-lightning: error: `INDEX`: `{tmp_path / 'no-index'}` does not exist " \
                                  "(build one with `cir-lightning index IMAGE_FOLDER`)"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", str(tmp_path), "--port", str(port)])  # refused before any model loads
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.splitlines()[0] == \
            f"cir-lightning: error: `--port {port}`: 127.0.0.1:{port} is already in use; choose another port " \
            "(`--port 0` picks a free one)"
        with pytest.raises(CIRConfigError, match="already in use"):
            make_server("127.0.0.1", port)
    # a first k the page would ask for and every search then refuse
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(tmp_path), "-k", "2000"])
    assert capsys.readouterr().err.splitlines()[0] == "cir-lightning: error: `-k` must be from 1 to 1000, got 2000"


def test_an_uploaded_16_bit_image_is_decoded_as_an_indexed_one(tmp_path):
    """``convert("RGB")`` clips 16-bit grey to white; uploads now go through ``load_image``'s conversion."""
    import numpy as np

    from cir_lightning.data.images import load_image
    from cir_lightning.serve.app import decode_upload

    grey = Image.fromarray((np.arange(8, dtype=np.uint16).reshape(1, 8) * 32 * 257).astype(np.uint16))
    assert grey.mode == "I;16"
    grey.save(tmp_path / "deep.png")
    uploaded = decode_upload(data_url((tmp_path / "deep.png").read_bytes()), "deep.png")
    assert list(uploaded.getdata()) == list(load_image(tmp_path / "deep.png").getdata())
    assert uploaded.getpixel((1, 0)) == (32, 32, 32)


def test_the_command_serves_an_index_with_its_backbone(gallery, monkeypatch, capsys):
    """The command's wiring, with a stand-in ``ImageIndex``: opened from INDEX, its backbone loaded, its
    ``query`` called with that backbone; the address printed; Ctrl+C stops it."""
    calls = []

    class FakeIndex:
        root, relpaths = gallery, indexed(gallery)

        @classmethod
        def open(cls, folder, root=None):
            calls.append(("open", Path(folder)))
            return cls()

        def load_backbone(self):
            return "the backbone"

        def query(self, backbone, image, text, k=10):
            calls.append(("query", backbone, text, k))
            return RecordingSearcher(self.root, self.relpaths).query(image, text, k)

        def marks(self, relpaths):
            calls.append(("marks", list(relpaths)))
            return {relpaths[0]: "gone"}

    served = []

    def serve_once(server, poll_interval=0.5):
        served.append(server)
        raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "cir_lightning.image_index", types.SimpleNamespace(ImageIndex=FakeIndex))
    monkeypatch.setattr(socketserver.BaseServer, "serve_forever", serve_once)
    main(["serve", str(gallery), "--port", "0", "-k", "4"])
    out = capsys.readouterr().out
    port = served[0].server_address[1]
    assert out.splitlines() == [f"cir-lightning serve: 12 images below {gallery}",
                                f"  open http://127.0.0.1:{port}/ in a browser (Ctrl+C stops)",
                                "cir-lightning serve: stopped"]
    code, body = post(served[0].app, {"text": "red", "relpath": "red/circle.png"})
    assert (code, len(body["hits"])) == (200, 4)
    assert [h["mark"] for h in body["hits"]] == ["gone", None, None, None]
    assert body["reference"] == {"relpath": "red/circle.png", "mark": None}
    assert calls == [("open", gallery), ("query", "the backbone", "red", 4),
                     ("marks", [*indexed(gallery)[:4], "red/circle.png"])]  # the hits' and the reference's, at once
    assert served[0].socket.fileno() == -1  # the socket was closed on the way out


# --- the page in a real browser ---------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,860", "--force-device-scale-factor=1"]


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium through Selenium. Missing, it fails the test where ``CIR_REQUIRE_BROWSER`` is set
    (``.ci/run`` installs it and sets it) and skips elsewhere, saying what to install."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("the Python package selenium")
    if missing:
        why = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver; pip install selenium)"
        pytest.fail(why) if os.environ.get("CIR_REQUIRE_BROWSER") else pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_iterative_search_in_the_browser(browser, marked_index, tmp_path):
    """Over a real index whose first result was replaced and second deleted since: both badged on the page."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from cir_lightning.image_index import ImageIndex
    from cir_lightning.serve import IndexSearcher

    k, text, (folder, marks) = 6, QUERY_TEXT, marked_index
    index = ImageIndex.open(folder)
    searcher = IndexSearcher(index, index.load_backbone())
    server = make_server("127.0.0.1", 0, SearchApp(searcher, k=k))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    wait = WebDriverWait(browser, 30)
    by_id = lambda name: browser.find_element(By.ID, name)  # noqa: E731

    def results_after(searches: int) -> list[tuple[str, float]]:
        wait.until(lambda _: by_id("results").get_attribute("data-searches") == str(searches))
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
        tiles = browser.find_elements(By.CSS_SELECTOR, "#results .tile")
        return [(t.get_attribute("data-relpath"), float(t.get_attribute("data-score"))) for t in tiles]

    def expected(image: Image.Image) -> list[tuple[str, float]]:
        return [(h.relpath, h.score) for h in searcher.query(image, text, k)]

    def assert_same(shown: list[tuple[str, float]], wanted: list[tuple[str, float]]) -> None:
        assert [r for r, _ in shown] == [r for r, _ in wanted]
        assert [s for _, s in shown] == pytest.approx([s for _, s in wanted], rel=1e-5)

    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        wait.until(lambda _: by_id("index-info").text.startswith("12 images"))
        reference = tmp_path / "my reference.png"
        query_image().save(reference)
        by_id("upload").send_keys(str(reference))  # upload a picture that is not in the index
        wait.until(lambda _: by_id("reference-path").text == "uploaded: my reference.png")
        by_id("text").send_keys(text)
        by_id("search").click()
        first = results_after(1)
        assert len(first) == k
        assert [s for _, s in first] == sorted((s for _, s in first), reverse=True)
        assert_same(first, expected(Image.open(reference).convert("RGB")))
        # the replaced photo and the gone one carry a badge saying so, inside their tile; the gone one has no image
        marked = browser.find_elements(By.CSS_SELECTOR, "#results .tile[data-mark]")
        badges = [tile.find_element(By.CSS_SELECTOR, ".badge") for tile in marked]
        assert {t.get_attribute("data-relpath"): b.text for t, b in zip(marked, badges, strict=True)} == marks
        for tile, badge in zip(marked, badges, strict=True):
            assert badge.is_displayed()
            inner, outer = badge.rect, tile.rect
            assert outer["x"] < inner["x"] < inner["x"] + inner["width"] < outer["x"] + outer["width"]
            assert outer["y"] < inner["y"] < inner["y"] + inner["height"] < outer["y"] + outer["height"] / 2
        assert [len(tile.find_elements(By.TAG_NAME, "img")) for tile in marked] == [1, 0]  # ranks 1, 2: changed, gone
        assert marked[1].find_element(By.CSS_SELECTOR, ".missing").text == "no file"  # a placeholder, with its path
        assert marked[1].find_element(By.CSS_SELECTOR, ".path").text == marked[1].get_attribute("data-relpath")
        assert "2 changed or gone since indexed: index the folder again" in by_id("status").text
        ActionChains(browser).move_to_element(by_id("status")).perform()
        write_atomic(SCREENSHOT.with_name("serve_screenshot_marks.png"), browser.get_screenshot_as_png(),
                     overwrite=True)

        clicked = browser.find_elements(By.CSS_SELECTOR, "#results .tile")[2]
        chosen = clicked.get_attribute("data-relpath")
        assert clicked.get_attribute("data-mark") is None
        clicked.click()  # iterative search: the result becomes the reference and the grid refreshes
        second = results_after(2)
        assert by_id("reference-path").get_attribute("data-relpath") == chosen
        assert by_id("reference-image").get_attribute("src").endswith(f"/image/{chosen}")
        assert len(second) == k
        assert [s for _, s in second] == sorted((s for _, s in second), reverse=True)
        assert_same(second, expected(Image.open(index.root / chosen).convert("RGB")))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#trail-list li")) == 2

        ActionChains(browser).move_to_element(by_id("status")).perform()  # no hover effect in the picture
        png = browser.get_screenshot_as_png()
        shot = Image.open(io.BytesIO(png))
        width, height = browser.execute_script("return [window.innerWidth, window.innerHeight]")
        assert (shot.format, shot.size) == ("PNG", (width, height))
        colours = shot.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None
        assert len(colours) > 50
        write_atomic(SCREENSHOT, png, overwrite=True)

        by_id("pick-toggle").click()  # the "Pick from index" grid badges the replaced photo and the gone one too
        wait.until(lambda _: by_id("picker-count").text == "12 of 12 shown · 2 changed or gone since indexed")
        picks = {t.get_attribute("data-relpath"): t for t in browser.find_elements(By.CSS_SELECTOR, "#picker-grid .tile")}
        assert list(picks) == index.relpaths
        gone, changed = sorted(marks, key=marks.get, reverse=True)
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", picks[gone])
        for relpath, tile in picks.items():
            badges = tile.find_elements(By.CSS_SELECTOR, ".badge")
            assert [b.text for b in badges] == ([marks[relpath]] if relpath in marks else [])
            assert len(tile.find_elements(By.TAG_NAME, "img")) == (relpath != gone)  # no broken image: "no file"
        assert [picks[gone].find_element(By.CSS_SELECTOR, s).text for s in (".missing", ".path")] == ["no file", gone]
        for relpath in marks:
            inner, outer = picks[relpath].find_element(By.CSS_SELECTOR, ".badge").rect, picks[relpath].rect
            assert outer["x"] < inner["x"] < inner["x"] + inner["width"] < outer["x"] + outer["width"]
            assert outer["y"] < inner["y"] < inner["y"] + inner["height"] < outer["y"] + outer["height"] / 2
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#picker-grid img')].every(i => i.complete && i.naturalWidth > 0)"))
        ActionChains(browser).move_to_element(by_id("status")).perform()
        write_atomic(SCREENSHOT.with_name("serve_screenshot_pick.png"), browser.get_screenshot_as_png(), overwrite=True)
        picks[gone].click()  # not pickable: nothing to search from
        assert by_id("picker").is_displayed()
        assert by_id("reference-path").get_attribute("data-relpath") == chosen
        picks[changed].click()  # pickable, said to be the file as it is now
        assert by_id("reference-path").get_attribute("data-relpath") == changed
        assert not by_id("picker").is_displayed()
        assert by_id("status").text == f"{changed} was replaced since the index was built: the search starts from " \
                                       "it as it is now."
        # the reference panel badges it as its tile was (it showed the replaced photo without a word)
        badge, panel = by_id("reference-mark"), by_id("reference")
        assert badge.is_displayed()
        assert badge.text == "changed since indexed"
        inner, outer = badge.rect, panel.rect
        assert outer["x"] < inner["x"] < inner["x"] + inner["width"] < outer["x"] + outer["width"]
        assert outer["y"] < inner["y"] < inner["y"] + inner["height"] < outer["y"] + outer["height"] / 2
        by_id("search").click()  # the search's answer says the reference's mark too: the badge stays
        third = results_after(3)
        assert_same(third, expected(Image.open(index.root / changed).convert("RGB")))
        assert (badge.is_displayed(), badge.text) == (True, "changed since indexed")
        ActionChains(browser).move_to_element(by_id("status")).perform()
        write_atomic(SCREENSHOT.with_name("serve_screenshot_reference.png"), browser.get_screenshot_as_png(),
                     overwrite=True)

        by_id("pick-toggle").click()  # pick an indexed image as the reference
        by_id("filter").send_keys("gold/")
        wait.until(lambda _: by_id("picker-count").text.startswith("3 of 3 shown"))
        pick = next(p for p in index.relpaths if p.startswith("gold/") and p not in marks)
        browser.find_element(By.CSS_SELECTOR, f'#picker-grid .tile[data-relpath="{pick}"]').click()
        assert by_id("reference-path").get_attribute("data-relpath") == pick
        assert not badge.is_displayed()  # an unmarked reference has no badge

        notes = tmp_path / "notes.txt"
        notes.write_text("not a picture")
        by_id("upload").send_keys(str(notes))
        wait.until(lambda _: by_id("reference-path").text == "uploaded: notes.txt")
        by_id("search").click()
        wait.until(lambda _: "error" in by_id("status").get_attribute("class"))
        assert by_id("status").text == "the uploaded file `notes.txt` is not an image (not a format Pillow can " \
                                       "read, or truncated)"
        assert results_after(3) == third  # a refused search leaves the last results on the page
    finally:
        server.shutdown()
        server.server_close()


def test_an_indexed_file_made_a_loop_of_links_since_is_refused_in_one_line(tmp_path):
    """pathlib's RuntimeError, in the server's request handler."""
    (tmp_path / "a.png").symlink_to(tmp_path / "a.png")
    code, body = get(SearchApp(RecordingSearcher(tmp_path, ["a.png"]), k=5), "/image/a.png")
    assert code == 404
    assert body["error"] == "`a.png` is indexed but its file is now a loop of symbolic links"
