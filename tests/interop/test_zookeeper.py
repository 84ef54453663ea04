"""Python Celery clients over ZooKeeper against Celeriac, with results on Redis.

ZooKeeper is Debian's package (`tests/services.sh` installs it when missing); this module
starts a private server on a free loopback port and stops it after. Each test uses a
virtual host of its own (`zookeeper://HOST:PORT/VHOST`, kombu's path prefix).
"""

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis
from kazoo.client import KazooClient

from conftest import REDIS_HOST, REDIS_PORT, celery_app, eventually, free_port, stored_results, wait_for_port
from databases import throwaway_database

TIMEOUT = 60
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")


@pytest.fixture(scope="module")
def zookeeper(tmp_path_factory):
    if not ZOOKEEPER_JAR.exists():
        pytest.fail("ZooKeeper is not installed (Debian package zookeeper; tests/services.sh installs it)")
    port = free_port()
    data = tmp_path_factory.mktemp("zookeeper")
    server = subprocess.Popen(
        ["java", "-cp", f"/etc/zookeeper/conf:{ZOOKEEPER_JAR}", "-Dzookeeper.admin.enableServer=false",
         "org.apache.zookeeper.server.ZooKeeperServerMain", str(port), str(data)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # kazoo would log every refused attempt; wait for the port quietly.
    wait_for_port(port, server, "ZooKeeper", 60)
    client = KazooClient(f"127.0.0.1:{port}")
    client.start(timeout=60)
    yield f"127.0.0.1:{port}", client
    client.stop()
    server.terminate()
    server.wait(timeout=30)


def backend(db):
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def test_tasks_and_failures_over_zookeeper_with_results_in_mysql(zookeeper, make_worker):
    endpoint, kazoo = zookeeper
    vhost = f"t{uuid.uuid4().hex[:10]}"
    url = f"zookeeper://{endpoint}/{vhost}"
    with throwaway_database("mysql") as database:
        make_worker(url, database.worker_url)
        app = celery_app(url, database.client_url)
        results = [app.send_task("math.add", (i, i)) for i in range(100)]
        assert [r.get(timeout=TIMEOUT) for r in results] == [2 * i for i in range(100)]
        with pytest.raises(ZeroDivisionError):
            app.send_task("math.div", (1, 0)).get(timeout=TIMEOUT)
    assert eventually(lambda: kazoo.get_children(f"/{vhost}/celery") == []), "acknowledged entries must be deleted"


def test_a_killed_worker_loses_nothing(zookeeper, db, make_worker):
    # kombu deletes an entry when it reads it, so its worker loses what it held when it
    # dies. Celeriac's claims end with the dead worker's session; the next worker runs them.
    endpoint, _ = zookeeper
    url = f"zookeeper://{endpoint}/t{uuid.uuid4().hex[:10]}"
    options = ["--broker-transport-option", "session_timeout=4"]
    first = make_worker(url, backend(db), *options)
    app = celery_app(url, backend(db))
    ids = [app.send_task("math.spin", (1500,)).id for _ in range(6)]
    first.wait_for_log("Task math.spin[")
    first.kill()
    results = redis.Redis(REDIS_HOST, REDIS_PORT, db=db)
    assert any(r is None for r in results.mget([f"celery-task-meta-{i}" for i in ids])), \
        "the worker finished everything before it was killed"
    make_worker(url, backend(db), *options)
    done = stored_results(results, ids, TIMEOUT)
    assert len(done) == len(ids), f"{len(ids) - len(done)} tasks lost"
    assert all(m["status"] == "SUCCESS" for m in done)


def test_priorities_follow_kombus_entry_names(zookeeper, db, make_worker):
    endpoint, _ = zookeeper
    url = f"zookeeper://{endpoint}/t{uuid.uuid4().hex[:10]}"
    app = celery_app(url, backend(db))
    low = [app.send_task("math.add", (i, 0), priority=0) for i in range(10)]
    high = app.send_task("math.add", (99, 0), priority=9)
    worker = make_worker(url, backend(db), "--concurrency", "1")
    assert high.get(timeout=TIMEOUT) == 99
    assert [r.get(timeout=TIMEOUT) for r in low] == list(range(10))
    log = worker.log()
    assert log.index(f"math.add[{high.id}] received") < log.index(f"math.add[{low[0].id}] received")


def test_malformed_entries_are_rejected_and_the_worker_goes_on(zookeeper, db, make_worker):
    endpoint, kazoo = zookeeper
    vhost = f"t{uuid.uuid4().hex[:10]}"
    url = f"zookeeper://{endpoint}/{vhost}"
    worker = make_worker(url, backend(db))
    bad = [b"not json", json.dumps([1, 2]).encode(), json.dumps({"body": "!!", "headers": {"id": "bad"}}).encode()]
    for data in bad:
        kazoo.create(f"/{vhost}/celery/entry-009-", data, sequence=True, makepath=True)
    app = celery_app(url, backend(db))
    assert app.send_task("math.add", (20, 22)).get(timeout=TIMEOUT) == 42
    deadline = time.time() + TIMEOUT
    while worker.log().count("rejecting malformed message") < len(bad) and time.time() < deadline:
        time.sleep(0.1)
    assert worker.log().count("rejecting malformed message") == len(bad), worker.log()[-3000:]
    assert eventually(lambda: kazoo.get_children(f"/{vhost}/celery") == []), "rejected entries must be deleted"
