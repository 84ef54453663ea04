"""Flower, Celery's monitoring dashboard, shows a Celeriac worker and its tasks: Flower is
started against the broker, and its pages are loaded in headless Chromium (Debian's
`chromium`, installed by tests/services.sh), as a person would open them.

The worker is started without -E: Flower turns task events on by remote control
(`enable_events`), as it does with Celery workers.
"""

import shutil
import subprocess
import sys
import uuid

import pytest

from conftest import REDIS_HOST, REDIS_PORT, celery_app, eventually, free_port

TIMEOUT = 30
CHROMIUM = shutil.which("chromium")


def page(url):
    """The page's DOM once its scripts have run."""
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=60,
    )
    return out.stdout


@pytest.fixture
def flower(db, tmp_path):
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    port = free_port()
    log = open(tmp_path / "flower.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-b", url, "flower", f"--port={port}", "--address=127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    assert eventually(lambda: "Visit me at" in (tmp_path / "flower.log").read_text(), timeout=TIMEOUT), \
        (tmp_path / "flower.log").read_text()
    yield url, f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (tests/services.sh installs it)")
def test_flower_shows_the_worker_and_its_tasks(flower, make_worker):
    url, base = flower
    node = f"celeriac-{uuid.uuid4().hex[:8]}@test"
    make_worker(url, url, "-n", node)
    app = celery_app(url, url)

    def events_on():
        conf = app.control.inspect(destination=[node], timeout=1).conf() or {}
        return conf.get(node, {}).get("worker_send_task_events")

    # Flower sends enable_events every 5 s.
    assert eventually(events_on, timeout=TIMEOUT), "Flower never turned task events on"
    result = app.send_task("math.add", (20, 22))
    assert result.get(timeout=TIMEOUT) == 42

    workers = eventually(lambda: node in (dom := page(f"{base}/workers")) and dom, timeout=TIMEOUT)
    assert workers, "Flower's workers page never listed the worker"
    tasks = eventually(lambda: result.id in (dom := page(f"{base}/tasks")) and dom, timeout=TIMEOUT)
    assert tasks, "Flower's tasks page never listed the task"
    detail = page(f"{base}/task/{result.id}")
    assert "math.add" in detail and "SUCCESS" in detail and node in detail
    worker_page = page(f"{base}/worker/{node}")
    assert "math.add" in worker_page, "the worker page lists its registered tasks"
    app.close()
