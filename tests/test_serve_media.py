"""image_url resolution: data URLs, allow-listed http(s) with address checks on every redirect
hop (SSRF; reliability anchor T13), local files under a root only."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mm15.serve.app import create_app
from mm15.serve.config import MediaConfig
from mm15.serve.fetch import Fetcher, address_refused, resolve_host
from mm15.serve.local_files import read_local_file
from mm15.serve.media import decode_data_url, load_image_url
from mm15.serve.schemas import APIError
from mm15.serve.server import BackgroundServer
from mm15.services.checkpoint import load_checkpoint
from tests.serve_fixtures import Scripted, config, image_message, png_bytes, post

PNG = png_bytes((40, 30))
PUBLIC_IP = "93.184.216.34"  # what the fake DNS says "img.example" is


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.hits[self.path] = srv.hits.get(self.path, 0) + 1
        path, _, arg = self.path.partition("?to=")
        if path == "/img.png":
            self._send(200, PNG, {"Content-Type": "image/png"})
        elif path == "/redirect":
            self._send(302, b"", {"Location": arg})
        elif path == "/loop":
            self._send(302, b"", {"Location": "/loop"})
        elif path == "/big":  # honest Content-Length above the limit
            self._send(200, b"\0" * 5000, {})
        elif path == "/endless":  # no length, more bytes than the limit
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\0" * 5000)
        elif path == "/drip":  # a byte at a time: every read succeeds, the deadline must not
            self.send_response(200)
            self.end_headers()
            while not srv.stop.wait(0.05):
                self.wfile.write(b"\0")
                self.wfile.flush()
        else:
            self._send(404, b"", {})

    def _send(self, status: int, body: bytes, headers: dict) -> None:
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def origin():
    """A loopback HTTP server that counts hits per path."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.hits, srv.stop, srv.daemon_threads = {}, threading.Event(), True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    srv.shutdown()


def _fake_dns_fetcher(origin, **cfg) -> Fetcher:
    """The host "img.example" resolves to a public address; every connection actually goes to the
    loopback origin (the dial is the only thing faked besides DNS)."""
    port = origin.server_address[1]
    resolve = lambda host, p: [PUBLIC_IP] if host == "img.example" else resolve_host(host, p)  # noqa: E731
    dial = lambda ip, p, timeout: socket.create_connection(("127.0.0.1", port), timeout=timeout)  # noqa: E731
    media = MediaConfig(
        allow_fetch_hosts=("img.example", "127.0.0.1", "169.254.169.254"),
        max_image_bytes=1000,
        fetch_timeout_s=0.5,
        **cfg,
    )
    return Fetcher(media, resolve=resolve, dial=dial)


@pytest.mark.parametrize(
    "ip, why",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("10.0.0.1", "private"),
        ("192.168.1.20", "private"),
        ("172.16.0.1", "private"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("100.64.0.1", "not globally routable"),
        ("240.0.0.1", "private"),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_classes(ip, why):
    assert address_refused(ip) == why


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/img.png",
        "http://localhost:{port}/img.png",
        "http://2130706433:{port}/img.png",
        "http://[::1]:{port}/img.png",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/x.png",
    ],
)
def test_private_addresses_refused_before_connecting(origin, url):
    port = origin.server_address[1]
    hosts = ("127.0.0.1", "localhost", "2130706433", "::1", "169.254.169.254", "10.0.0.1")
    fetcher = Fetcher(MediaConfig(allow_fetch_hosts=hosts))
    before = dict(origin.hits)
    with pytest.raises(APIError, match="refused") as err:
        fetcher.fetch(url.format(port=port))
    assert err.value.status == 400 and err.value.code == "fetch_refused"
    assert origin.hits == before  # the origin never saw a request


def test_fetch_is_off_by_default_and_hosts_must_be_listed(origin):
    with pytest.raises(APIError, match="disabled"):
        Fetcher(MediaConfig()).fetch("http://img.example/img.png")
    fetcher = _fake_dns_fetcher(origin)
    for url in (
        "http://other.example/img.png",
        "http://user:pw@img.example/img.png",
        "http://IMG.example.evil.org/img.png",
    ):
        with pytest.raises(APIError, match=r"allow-list|credentials"):
            fetcher.fetch(url)


def test_allowed_public_host_is_fetched(origin):
    fetcher = _fake_dns_fetcher(origin)
    assert fetcher.fetch("http://img.example/img.png") == PNG
    image = load_image_url("http://IMG.example/img.png", fetcher.cfg, fetcher, "img")
    assert image.size == (40, 30)


@pytest.mark.parametrize(
    "target, match",
    [
        ("http://127.0.0.1:{port}/img.png?secret", "loopback address"),
        ("http://other.example/img.png", "allow-list"),
        ("file:///etc/passwd", "redirect to a file URL"),
        ("http://169.254.169.254/latest", "link-local"),
    ],
)
def test_every_redirect_hop_is_checked(origin, target, match):
    target = target.format(port=origin.server_address[1])
    fetcher = _fake_dns_fetcher(origin)
    with pytest.raises(APIError, match=match):
        fetcher.fetch(f"http://img.example/redirect?to={target}")
    assert origin.hits.get("/img.png?secret", 0) == 0


def test_redirects_are_bounded_and_followed(origin):
    fetcher = _fake_dns_fetcher(origin)
    with pytest.raises(APIError, match="more than 3 redirects"):
        fetcher.fetch("http://img.example/loop")
    assert fetcher.fetch("http://img.example/redirect?to=/img.png") == PNG


def test_size_and_time_limits_cut_the_download(origin):
    fetcher = _fake_dns_fetcher(origin)
    for path in ("/big", "/endless"):
        with pytest.raises(APIError, match="limit of 1,000") as err:
            fetcher.fetch(f"http://img.example{path}")
        assert err.value.code == "image_too_large"
    t0 = time.perf_counter()
    with pytest.raises(APIError, match="timed out"):
        fetcher.fetch("http://img.example/drip")
    assert time.perf_counter() - t0 < 1.5  # fetch_timeout_s = 0.5 for the whole download


def test_private_addresses_allowed_only_when_configured(origin):
    port = origin.server_address[1]
    media = MediaConfig(allow_fetch_hosts=("127.0.0.1",), allow_private_addresses=True)
    assert Fetcher(media).fetch(f"http://127.0.0.1:{port}/img.png") == PNG


def test_data_urls():
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert decode_data_url(url, 10_000, "x") == PNG
    wrapped = "data:image/png;base64," + base64.encodebytes(PNG).decode()  # with newlines
    assert decode_data_url(wrapped, 10_000, "x") == PNG
    for bad, match in [
        ("data:text/plain;base64,aGk=", "not image"),
        ("data:image/png,abc", "not base64"),
        ("data:image/png;base64,a$b=", "invalid base64"),
        ("data:;base64,aGk=", "not image"),
        ("data:image/png;base64", "malformed"),
    ]:
        with pytest.raises(APIError, match=match):
            decode_data_url(bad, 10_000, "x")
    with pytest.raises(APIError, match="above the limit") as err:
        decode_data_url(url, len(PNG) - 10, "x")
    assert err.value.code == "image_too_large"


def test_local_files_only_inside_the_root(tmp_path):
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(PNG)
    os.symlink(tmp_path / "secret.png", root / "link.png")
    os.mkfifo(root / "fifo.png")
    cfg = MediaConfig(media_root=str(root), max_image_bytes=len(PNG))
    assert read_local_file(f"file://{root}/sub/a.png", cfg, "x") == PNG
    assert load_image_url(f"file://{root}/sub/a.png", cfg, Fetcher(cfg), "x").size == (40, 30)
    refused = {
        f"file://{root}/../secret.png": "outside the media root",
        f"file://{root}/sub/%2e%2e/%2e%2e/secret.png": "outside the media root",
        f"file://{root}/link.png": "outside the media root",  # a symlink out of the root
        f"file://{root}/fifo.png": "not a regular file",  # would block a reader
        f"file://{root}/missing.png": "cannot read",
        f"file://{root}/sub": "not a regular file",
        f"file://evil.example{root}/sub/a.png": "no host",
    }
    for url, match in refused.items():
        with pytest.raises(APIError, match=match):
            read_local_file(url, cfg, "x")
    with pytest.raises(APIError, match="disabled"):
        read_local_file(f"file://{root}/sub/a.png", MediaConfig(), "x")
    small = MediaConfig(media_root=str(root), max_image_bytes=len(PNG) - 1)
    with pytest.raises(APIError, match="above the limit"):
        read_local_file(f"file://{root}/sub/a.png", small, "x")


def test_server_refuses_ssrf_with_4xx_and_no_hit(origin, tiny_ckpt_dir, tmp_path):
    """Through the whole server: fetching is on for loopback names, and still refused."""
    model, tok = load_checkpoint(tiny_ckpt_dir)
    (tmp_path / "ok.png").write_bytes(PNG)
    cfg = config(
        media={"allow_fetch_hosts": ("127.0.0.1", "localhost"), "media_root": str(tmp_path)}
    )
    port = origin.server_address[1]
    before = dict(origin.hits)
    with BackgroundServer(create_app(model, tok, cfg, generate_fn=Scripted(tok, "ok"))) as server:
        url = f"{server.url}/v1/chat/completions"
        for image in (
            f"http://127.0.0.1:{port}/img.png",
            f"http://localhost:{port}/img.png",
            "file:///etc/passwd",
            f"file://{tmp_path}/../x.png",
        ):
            status, _, reply = post(url, {"model": "tiny", "messages": image_message("x", image)})
            assert status == 400 and "error" in reply, reply
        status, _, reply = post(
            url, {"model": "tiny", "messages": image_message("x", f"file://{tmp_path}/ok.png")}
        )
        assert status == 200 and reply["choices"][0]["message"]["content"] == "ok"
    assert origin.hits == before
