"""The webhook receiver under abuse: a real HTTP server on 127.0.0.1, no Label Studio."""

from __future__ import annotations

import http.client
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from al_pipeline.labelling.labelstudio.webhooks import EVENT_BACKLOG, PATH, SECRET_HEADER, _server


def _post(port: int, body: bytes, headers: dict[str, str]) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", PATH, body=body, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_flood_of_posts_is_answered_in_full_without_a_traceback(
    capfd: pytest.CaptureFixture[str],
) -> None:
    events: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=EVENT_BACKLOG)
    server = _server(0, "s3cret", 7, events)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    good = {SECRET_HEADER: "s3cret", "Content-Type": "application/json"}
    body = b'{"action": "ANNOTATION_CREATED", "project": {"id": 7}}'
    try:
        with ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(lambda _: _post(port, body, good), range(2000)))
        assert codes == [200] * 2000
        assert 0 < events.qsize() <= EVENT_BACKLOG
        bad = [
            ({**good, "Content-Length": "abc"}, b"{}"),
            ({**good, SECRET_HEADER: "wrong"}, body),
            (good, b"not json"),
            (good, b'{"project": {"id": 8}}'),
        ]
        assert [_post(port, b, h) for h, b in bad] == [400, 403, 400, 403]
        huge = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        huge.putrequest("POST", PATH)
        huge.putheader(SECRET_HEADER, "s3cret")
        huge.putheader("Content-Length", str(1 << 30))
        huge.endheaders()
        assert huge.getresponse().status == 413
        huge.close()
    finally:
        server.shutdown()
        server.server_close()
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out
