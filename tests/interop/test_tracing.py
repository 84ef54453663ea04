"""OpenTelemetry: with --otlp-endpoint the worker sends a span per task over OTLP/HTTP
(JSON), and the tasks of one chain form one trace, linked by root_id and parent_id.
The collector is a small HTTP server here that keeps what it is sent.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import REDIS_HOST, REDIS_PORT, celery_app

TIMEOUT = 30


@pytest.fixture
def collector():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], json.loads(body)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()


def spans_of(received):
    return [span
            for _, _, body in received
            for resource in body.get("resourceSpans", [])
            for scope in resource.get("scopeSpans", [])
            for span in scope.get("spans", [])]


def attribute(span, key):
    for item in span["attributes"]:
        if item["key"] == key:
            return next(iter(item["value"].values()))
    return None


def test_a_chain_is_one_trace(db, collector, make_worker):
    endpoint, received = collector
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    worker = make_worker(url, url, "--otlp-endpoint", endpoint)
    app = celery_app(url, url)
    add = lambda *args: app.signature("math.add", args)  # noqa: E731
    result = (add(1, 2) | add(10)).apply_async()
    assert result.get(timeout=TIMEOUT) == 13
    first = result.parent
    worker.stop()  # flushes the spans

    assert received and all(path == "/v1/traces" for path, _, _ in received)
    assert all(kind.startswith("application/json") for _, kind, _ in received)
    spans = {attribute(s, "celery.task_id"): s for s in spans_of(received)}
    assert set(spans) == {first.id, result.id}
    root, child = spans[first.id], spans[result.id]
    trace = first.id.replace("-", "")
    assert root["traceId"] == child["traceId"] == trace, "the root task's id is the trace id"
    assert root["spanId"] == first.id.replace("-", "")[16:]
    assert child["parentSpanId"] == root["spanId"], "the second step hangs under the first"
    assert root["name"] == "math.add" and attribute(root, "celery.state") == "SUCCESS"
    assert attribute(root, "celeriac.plugin") == "math"
    app.close()
