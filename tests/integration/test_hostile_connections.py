"""What a hostile client can make the three servers (controller, worker, web UI) hold: request heads are bounded in
size (431) and in time (408), and a body declared too large is refused before `100 Continue` (413), all through
common/bounded_http.py. Real processes on loopback, raw sockets (an HTTP library will not send such requests)."""

from __future__ import annotations

import pytest

from tests.support.raw_http import connect, read_until_closed, rss_mib, send_until_refused, status_of
from tests.support.stack import SCRIPTED, start_controller, start_worker
from tests.support.ui_process import start_ui

HEAD_TIMEOUT_S = 2.0
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def servers(demo_checkpoint, log_dir, tmp_path_factory):
    controller = start_controller(log_dir, header_timeout_s=HEAD_TIMEOUT_S)
    worker = start_worker(log_dir, demo_checkpoint, None, engine=SCRIPTED, header_timeout_s=HEAD_TIMEOUT_S)
    ui = start_ui(controller.url, log_dir, tmp_path_factory.mktemp("conv"), "--header-timeout-s", str(HEAD_TIMEOUT_S))
    try:
        yield {"controller": (controller.url, controller.popen.pid), "worker": (worker.url, worker.popen.pid),
               "ui": (ui.url, ui.popen.pid)}
    finally:
        ui.stop()
        worker.stop()
        controller.stop()


SERVERS = ["controller", "worker", "ui"]
PROBE = {"controller": "/health", "worker": "/health", "ui": "/gradio_api/info"}
UPLOAD = {"controller": "/v1/chat/completions", "worker": "/v1/chat/completions", "ui": "/gradio_api/upload"}


def _head(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()


@pytest.mark.parametrize("name", SERVERS)
@pytest.mark.parametrize("filler", [b"X-Big: " + b"a" * 65536, b"X-Many: " + b"b" * 90 + b"\r\n"],
                         ids=["one-huge-header", "many-headers"])
def test_oversized_request_heads_get_431_and_a_closed_connection(servers, name, filler):
    url, pid = servers[name]
    sock = connect(url)
    sock.sendall(_head(PROBE[name]) + b"\r\n")  # one ordinary request first: what serving it costs is the baseline
    assert status_of(sock.recv(65536)) == 200
    sock.close()
    before = rss_mib(pid)
    socks = [connect(url) for _ in range(20)]  # twenty at once, each offering 8 MB of head
    try:
        sent = [send_until_refused(s, _head(PROBE[name]), filler, 8 * MiB) for s in socks]
        answers = [read_until_closed(s) for s in socks]
    finally:
        for s in socks:
            s.close()
    assert [status_of(a) for a, _ in answers] == [431] * 20, answers[0]
    assert all(closed for _, closed in answers)
    assert max(sent) < 8 * MiB, "the server went on reading the head"
    grown = rss_mib(pid) - before
    assert grown < 24, f"{name} grew {grown:.1f} MiB on 20 refused heads"


@pytest.mark.parametrize("name", SERVERS)
def test_an_oversized_head_behind_a_request_in_the_same_read_gets_431(servers, name):
    """Pipelined: the second head begins in the read that ended the first request, so the bytes counted for it are
    not all of it (common/bounded_http.py sums such a head's headers)."""
    url, _ = servers[name]
    sock = connect(url)
    try:
        sock.sendall(_head(PROBE[name]) + b"\r\n" + _head(PROBE[name]) + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        answer, closed = read_until_closed(sock)
    finally:
        sock.close()
    assert b"HTTP/1.1 431 " in answer, answer[:300]
    assert closed


@pytest.mark.parametrize("name", SERVERS)
def test_a_head_that_never_ends_gets_408_and_a_closed_connection(servers, name):
    url, _ = servers[name]
    sock = connect(url)
    try:
        sock.sendall(_head(PROBE[name]) + b"X-Slow: 1\r\n")  # and then nothing: the blank line never comes
        answer, closed = read_until_closed(sock, timeout=HEAD_TIMEOUT_S + 8)
    finally:
        sock.close()
    assert status_of(answer) == 408, answer
    assert closed


@pytest.mark.parametrize("name", SERVERS)
def test_a_body_declared_too_large_is_refused_before_100_continue(servers, name):
    url, _ = servers[name]
    sock = connect(url)
    try:
        sock.sendall(f"POST {UPLOAD[name]} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {1024 * MiB}\r\nExpect: 100-continue\r\n\r\n".encode())
        answer, _ = read_until_closed(sock, timeout=5)
    finally:
        sock.close()
    assert b"100 Continue" not in answer, answer[:200]
    assert status_of(answer) == 413, answer[:300]
