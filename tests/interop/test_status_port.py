"""The worker's own HTTP port: /healthz, /readyz and /metrics, with any broker (Redis here).
/events and /inspect are in test_control.py."""

import urllib.error
import urllib.request

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from conftest import REDIS_HOST, REDIS_PORT, celery_app

TIMEOUT = 60


def url(db):
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def get(address):
    with urllib.request.urlopen(address, timeout=10) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read().decode()


def test_health_readiness_and_metrics(db, make_worker):
    worker = make_worker(url(db), url(db))
    base = worker.status_url()
    assert get(f"{base}/healthz")[0] == 200
    assert get(f"{base}/readyz")[:1] == (200,)
    app = celery_app(url(db), url(db))
    assert [app.send_task("math.add", (i, i)).get(timeout=TIMEOUT) for i in range(3)] == [0, 2, 4]
    with pytest.raises(ZeroDivisionError):
        app.send_task("math.div", (1, 0)).get(timeout=TIMEOUT)
    status, content_type, text = get(f"{base}/metrics")
    assert status == 200 and content_type.startswith("application/openmetrics-text")
    assert 'celeriac_tasks_total{task="math.add",state="SUCCESS"} 3' in text, text
    assert 'celeriac_tasks_total{task="math.div",state="FAILURE"} 1' in text, text
    assert 'celeriac_task_runtime_seconds_count{task="math.add"} 3' in text, text
    assert "celeriac_tasks_running 0" in text
    assert "redis://" not in text and "password" not in text
    # It parses as OpenMetrics (with the parser Flower's own metrics use), and the figures
    # of what tasks used and waited move with them.
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, s.labels.get("task") or s.labels.get("plugin")): s.value
               for f in families.values() for s in f.samples}
    assert samples[("celeriac_task_wait_seconds_count", "math.add")] == 3
    assert samples[("celeriac_task_cpu_seconds_total", "math.add")] > 0
    assert samples[("celeriac_task_peak_memory_bytes_count", "math")] == 4
    assert samples[("celeriac_broker_receive_errors_total", None)] == 0


def test_readiness_ends_with_a_warm_shutdown(db, make_worker):
    worker = make_worker(url(db), url(db))
    base = worker.status_url()
    app = celery_app(url(db), url(db))
    long = app.send_task("math.spin", (3000,))
    worker.wait_for_log(f"math.spin[{long.id}] received")
    worker.process.send_signal(15)
    worker.wait_for_log("warm shutdown")
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(f"{base}/readyz")
    assert refused.value.code == 503
    assert get(f"{base}/healthz")[0] == 200, "alive while it finishes its running task"
    assert long.get(timeout=TIMEOUT) == 3000
