"""Every way a download can fail is a DownloadError naming the URL, so the offline fallback happens.
The only server is a local one on 127.0.0.1."""

import hashlib
import http.client
import http.server
import socket
import threading
import urllib.request

import pytest

from vqlib.core import download
from vqlib.core.download import DownloadError, fetch
from vqlib.data import mnist as data

BODY = b"0123456789" * 100


class CutOff(http.server.BaseHTTPRequestHandler):
    """Promises a chunk of 1,000 bytes, sends 10, and hangs up: a connection lost mid-body."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - the name http.server calls
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"3e8\r\n" + BODY[:10])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def cut_off_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutOff)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_a_body_cut_off_mid_way_is_a_download_error(cut_off_server):
    url = cut_off_server + "file.gz"
    with pytest.raises(DownloadError, match=r"could not download .*file\.gz \(IncompleteRead.*check the network"):
        fetch(url, hashlib.md5(BODY).hexdigest(), folder="cut")
    assert not list((download.cache_dir() / "cut").iterdir())  # no half file, no temporary file


def test_full_mnist_cut_off_mid_way_falls_back_to_the_bundled_digits(cut_off_server, monkeypatch):
    monkeypatch.setattr(data, "MNIST_URL", cut_off_server)
    with pytest.warns(UserWarning, match="IncompleteRead.*bundled digits"):
        test = data.mnist("test", profile="full")
    assert len(test) == 1000


class FakeResponse:
    """A response whose body fails on the second read with ``error``."""

    def __init__(self, error):
        self.error, self.reads = error, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, size=-1):
        self.reads += 1
        if self.reads > 1:
            raise self.error
        return b"partial"


@pytest.mark.parametrize("error", [http.client.IncompleteRead(b"par", 100), ConnectionResetError(104, "reset"),
                                   socket.timeout("timed out"), OSError(5, "input/output error"),
                                   http.client.RemoteDisconnected("closed")])
def test_every_failure_while_reading_is_a_download_error(monkeypatch, error):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: FakeResponse(error))
    expected = rf"could not download http://example.invalid/x.bin \({type(error).__name__}"
    with pytest.raises(DownloadError, match=expected):
        fetch("http://example.invalid/x.bin", "0" * 32, folder="fake")
    assert not list((download.cache_dir() / "fake").iterdir())


@pytest.mark.parametrize("error", [http.client.BadStatusLine("garbage"), ConnectionRefusedError(111, "refused"),
                                   socket.timeout("timed out")])
def test_every_failure_while_connecting_is_a_download_error(monkeypatch, error):
    def refuse(url, timeout):
        raise error

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(DownloadError, match=r"could not download http://example.invalid/y.bin .*put the file at"):
        fetch("http://example.invalid/y.bin", "0" * 32, folder="fake")


def test_a_sha1_checks_like_an_md5_and_a_malformed_checksum_is_refused(tmp_path):
    src = tmp_path / "file.bin"
    src.write_bytes(BODY)
    assert fetch(src.as_uri(), hashlib.sha1(BODY).hexdigest(), folder="sha").read_bytes() == BODY
    with pytest.raises(DownloadError, match="arrived corrupt or changed: sha1"):
        fetch(src.as_uri(), hashlib.sha1(b"other").hexdigest(), folder="sha2")
    for bad in ("0" * 31, "0" * 64, "Z" * 32, hashlib.md5(BODY).hexdigest().upper()):
        with pytest.raises(ValueError, match="MD5 .32 lower-case hex digits. or a SHA-1 .40."):
            fetch(src.as_uri(), bad, folder="sha3")
