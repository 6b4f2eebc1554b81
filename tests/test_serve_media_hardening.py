"""Media-layer hardening (issue 18's probe, defects 6, 7 and 10): the fetch deadline covers the
response head, ``file://`` opens cannot be raced outside the media root, and odd URLs get a 400.

Loopback only: "img.example" stands in for a public host through Fetcher's ``resolve``/``dial``
hooks, as in tests/test_serve_media.py.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mm15.serve.app import create_app
from mm15.serve.config import MediaConfig
from mm15.serve.fetch import Fetcher
from mm15.serve.local_files import read_local_file
from mm15.serve.media import load_image_url
from mm15.serve.schemas import APIError
from mm15.serve.server import BackgroundServer
from mm15.services.checkpoint import load_checkpoint
from tests.serve_fixtures import Scripted, config, get, image_message, png_bytes, post

PNG = png_bytes((40, 30))
INSIDE, OUTSIDE = b"inside the root", b"SECRET outside the root"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        try:
            if self.path == "/drip-status":  # the status line itself a byte at a time
                self._drip(b"HTTP/1.1 200 OK\r\nX-Drip: " + b"a" * 40)
            elif self.path == "/drip-headers":  # a prompt status line, then a dripping header
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                self._drip(b"X-Drip: " + b"a" * 52)
            elif self.path == "/huge-head":  # 50 headers of 4 kB: under http.client's own caps
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for i in range(50):
                    self.wfile.write(b"X-Pad-%d: %s\r\n" % (i, b"p" * 4000))
                self._end(PNG)
            elif self.path == "/%C3%A9.png":  # "é.png", percent-encoded as UTF-8
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                self._end(PNG)
            else:
                self.wfile.write(b"HTTP/1.1 404 Not Found\r\n")
                self._end(b"")
        except OSError:
            pass  # the fetcher gave up and closed the connection: what the drip tests expect

    def _drip(self, head: bytes) -> None:
        """One byte every 50 ms (60 bytes at most, 3 s), then the rest of a valid response."""
        for i in range(len(head)):
            if self.server.stop.wait(0.05):
                return
            self.wfile.write(head[i : i + 1])
            self.wfile.flush()
        self.wfile.write(b"\r\n")
        self._end(PNG)

    def _end(self, body: bytes) -> None:
        self.wfile.write(b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))


@pytest.fixture(scope="module")
def origin():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.paths, srv.stop, srv.daemon_threads = [], threading.Event(), True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    srv.shutdown()


def _fetcher(origin, timeout_s: float = 0.5) -> Fetcher:
    port = origin.server_address[1]
    resolve = lambda host, p: ["93.184.216.34"]  # noqa: E731 - a public address
    dial = lambda ip, p, timeout: socket.create_connection(("127.0.0.1", port), timeout=timeout)  # noqa: E731
    media = MediaConfig(allow_fetch_hosts=("img.example",), fetch_timeout_s=timeout_s)
    return Fetcher(media, resolve=resolve, dial=dial)


# --- defect 6: the deadline covers the status line and headers; the head is bounded ----------


@pytest.mark.parametrize("path", ["/drip-status", "/drip-headers"])
def test_dripped_response_head_is_cut_at_the_deadline(origin, path):
    """Each byte comes well within any per-read timeout; only the overall deadline can stop it
    (before the fix the fetch lasted as long as the drip: 3 s here, forever in the probe)."""
    t0 = time.perf_counter()
    with pytest.raises(APIError, match="timed out") as err:
        _fetcher(origin, timeout_s=0.5).fetch(f"http://img.example{path}")
    assert err.value.status == 400 and err.value.code == "fetch_timeout"
    assert time.perf_counter() - t0 < 2.0


def test_response_head_size_is_bounded(origin):
    with pytest.raises(APIError, match="headers are over 65,536 bytes") as err:
        _fetcher(origin, timeout_s=5).fetch("http://img.example/huge-head")
    assert err.value.status == 400 and err.value.code == "fetch_failed"


# --- defect 7: file:// under the media root is opened without a check-then-open race ----------


def _tree(tmp_path):
    root, outside = tmp_path / "media", tmp_path / "outside"
    (root / "dir").mkdir(parents=True)
    outside.mkdir()
    (root / "dir" / "x.png").write_bytes(INSIDE)
    (outside / "x.png").write_bytes(OUTSIDE)
    return root, outside, MediaConfig(media_root=str(root), max_image_bytes=1000)


def test_no_symlink_is_followed_below_the_root(tmp_path):
    """The documented rule: below the root no symlink is followed, whatever it points at; the
    root itself may be a symlink (the operator's choice)."""
    root, outside, cfg = _tree(tmp_path)
    os.symlink(outside / "x.png", root / "out.png")  # the final component, pointing out
    os.symlink(outside, root / "outdir")  # an intermediate directory, pointing out
    os.symlink(root / "dir" / "x.png", root / "in.png")  # pointing inside: refused as well
    os.symlink(root / "dir", root / "indir")
    for name in ("out.png", "outdir/x.png", "in.png", "indir/x.png"):
        with pytest.raises(APIError, match="symbolic link") as err:
            read_local_file(f"file://{root}/{name}", cfg, "x")
        assert err.value.status == 400 and err.value.code == "path_outside_root"
    os.symlink(root, tmp_path / "root-link")
    linked = MediaConfig(media_root=str(tmp_path / "root-link"), max_image_bytes=1000)
    assert read_local_file(f"file://{tmp_path}/root-link/dir/x.png", linked, "x") == INSIDE
    assert read_local_file(f"file://{root}/dir/x.png", linked, "x") == INSIDE  # its real path


def test_fifo_and_dotdot_are_refused_without_blocking(tmp_path):
    root, _, cfg = _tree(tmp_path)
    os.mkfifo(root / "dir" / "fifo.png")  # no writer: a blocking open would never return
    with pytest.raises(APIError, match="not a regular file"):
        read_local_file(f"file://{root}/dir/fifo.png", cfg, "x")
    with pytest.raises(APIError, match=r"'\.\.' component") as err:
        read_local_file(f"file://{root}/dir/../dir/x.png", cfg, "x")
    assert err.value.code == "path_outside_root"


def test_file_swapped_for_a_symlink_after_the_check_is_not_read(tmp_path, monkeypatch):
    """The probe's interleaving made deterministic: the file is regular while its path is
    resolved and checked, and a symlink to a file outside the root by the time it is opened."""
    root, outside, cfg = _tree(tmp_path)
    real_realpath, target = os.path.realpath, root / "dir" / "x.png"

    def resolve_then_swap(path, *args, **kwargs):
        resolved = real_realpath(path, *args, **kwargs)
        if os.fspath(path) == os.fspath(target):  # the old design's check of the file
            os.symlink(outside / "x.png", root / "swap")
            os.replace(root / "swap", target)
        return resolved

    monkeypatch.setattr(os.path, "realpath", resolve_then_swap)
    try:
        data = read_local_file(f"file://{target}", cfg, "x")
    except APIError as e:
        assert e.code in ("path_outside_root", "image_missing"), e
    else:
        assert data == INSIDE  # read before any swap; never the outside bytes


@pytest.mark.parametrize("swap", ["file", "directory"])
def test_swapping_symlinks_never_leak_outside_bytes(tmp_path, swap):
    """A thread flips ``dir/x.png`` (or ``dir``) between the real thing inside the root and a
    symlink out of it while requests read ``dir/x.png``: at least 300 reads and 300 flips.
    Property: the outside bytes are never returned, and every refusal is a 400."""
    root, outside, cfg = _tree(tmp_path)
    if swap == "file":
        link_to, name = outside / "x.png", root / "dir" / "x.png"
    else:
        link_to, name, parked = outside, root / "dir", root / "parked"
    stop, leaked, flips, old_interval = threading.Event(), [], [], sys.getswitchinterval()
    errors: list[BaseException] = []

    def flip() -> None:
        try:
            for i in range(1, 1_000_000):  # bounded; the reads below stop it much sooner
                if stop.is_set():
                    return
                if swap == "file":  # atomic: the name is always there
                    tmp = root / "tmp"
                    os.symlink(link_to, tmp) if i % 2 else tmp.write_bytes(INSIDE)
                    os.replace(tmp, name)
                elif i % 2:  # a directory cannot be renamed over a symlink: two steps each way
                    os.rename(name, parked)
                    os.symlink(link_to, name)
                else:
                    os.unlink(name)
                    os.rename(parked, name)
                flips.append(i)
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    sys.setswitchinterval(1e-5)  # let the flipper run between the reader's steps
    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    deadline = time.monotonic() + 30  # a loaded machine may starve the flipper for a while
    try:
        for n in range(1_000_000):  # at least 300 reads, and until 300 flips happened among them
            if (n >= 300 and len(flips) >= 300) or time.monotonic() > deadline:
                break
            try:
                data = read_local_file(f"file://{root}/dir/x.png", cfg, "x")
            except APIError:
                continue  # refused mid-swap: fine
            leaked += [data] if data == OUTSIDE else []
    finally:
        stop.set()
        flipper.join(10)
        sys.setswitchinterval(old_interval)
    assert not errors and not flipper.is_alive(), f"the flipping thread failed: {errors}"
    assert len(flips) >= 300, f"only {len(flips)} flips in 30 s ({n} reads)"
    assert not leaked, f"{len(leaked)} of {n} reads returned bytes from outside the root"


# --- defect 10: every bad URL is a 400 that says why, never a 500 ------------------------------


def test_file_urls_the_os_cannot_take_are_400(tmp_path):
    root, _, cfg = _tree(tmp_path)
    cases = {
        f"file://{root}/dir/x%00.png": "NUL byte",  # was ValueError: embedded null byte (500)
        f"file://{root}/dir/x.png%00": "NUL byte",
        f"file://{root}/dir/\ud800.png": "not valid Unicode",  # a JSON "\ud800" escape
        "file://[::1/x.png": "malformed file URL",
        "file:relative/x.png": "absolute",
        f"file://{root}/dir/{'a' * 5000}.png": "cannot read",  # ENAMETOOLONG
    }
    for url, match in cases.items():
        with pytest.raises(APIError, match=match) as err:
            load_image_url(url, cfg, Fetcher(cfg), "x")
        assert err.value.status == 400, url
    assert read_local_file(f"file://{root}/dir/%78.png", cfg, "x") == INSIDE  # %78 is "x"


def test_http_urls_with_odd_characters(origin):
    fetcher = _fetcher(origin, timeout_s=5)
    assert fetcher.fetch("http://img.example/é.png") == PNG  # sent as /%C3%A9.png
    assert origin.paths[-1] == "/%C3%A9.png"
    before = len(origin.paths)
    cases = {
        "http://img.example/\ud800.png": "not valid Unicode",
        "http://img.example/a\x00b.png": "control character",
        "http://img.example/a b.png": "space",
        "http://img.example/?q=\x7f": "control character",
        "http://img.example/" + "a" * 9000: "above the limit of 8,192",
        "http://img.example:99999/x.png": "malformed URL",
    }
    for url, match in cases.items():
        with pytest.raises(APIError, match=match) as err:
            fetcher.fetch(url)
        assert err.value.status == 400 and err.value.code == "invalid_image_url", url
    assert len(origin.paths) == before  # refused before any request was sent
    with pytest.raises(APIError, match="HTTP 404") as err:  # %00 stays an escape: the origin's call
        fetcher.fetch("http://img.example/a%00b.png")
    assert origin.paths[-1] == "/a%00b.png" and err.value.code == "fetch_failed"


def test_data_urls_with_odd_bytes_are_400():
    for url, match in {
        "data:image/png;base64,\ud800AAA": "invalid base64",
        "data:image/png;base64,\x00\x01\x02\x03": "invalid base64",
        "data:\ud800/png;base64,AAAA": "malformed",
        "data:image/png;base64,AAAA": "not an image",
        "data:image/png;base64," + "A" * 4000: "above the limit",
    }.items():
        with pytest.raises(APIError, match=match) as err:
            load_image_url(url, MediaConfig(max_image_bytes=1000), Fetcher(MediaConfig()), "x")
        assert err.value.status == 400


def test_server_answers_odd_urls_with_400(tiny_ckpt_dir, tmp_path):
    """Through the whole app: each was a 500 (or would be) before; now 400 with an error body,
    and the server still answers after them."""
    model, tok = load_checkpoint(tiny_ckpt_dir)
    (tmp_path / "ok.png").write_bytes(PNG)
    cfg = config(media={"media_root": str(tmp_path), "allow_fetch_hosts": ("img.example",)})
    app = create_app(model, tok, cfg, generate_fn=Scripted(tok, "ok"))
    ok = {"model": "tiny", "messages": image_message("x", f"file://{tmp_path}/ok.png")}
    with BackgroundServer(app) as server:
        url = f"{server.url}/v1/chat/completions"
        for image in (
            f"file://{tmp_path}/ok%00.png",
            f"file://{tmp_path}/\ud800.png",
            "file://[::1/x.png",
            "http://img.example/\ud800",
            "data:image/png;base64,\ud800",
        ):
            body = {"model": "tiny", "messages": image_message("x", image)}
            status, _, reply = post(url, body)
            assert status == 400 and reply["error"]["message"], (image, status, reply)
        assert post(url, ok)[0] == 200
        assert get(f"{server.url}/health") == (200, {"status": "ok"})
