"""Python Celery clients against Celeriac on the real RabbitMQ (127.0.0.1:5672, guest).

Each test consumes queues named for it alone and deletes them afterwards.
"""

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import amqp
import pytest
import redis
from billiard.exceptions import TimeLimitExceeded
from celery import chord, group
from celery.exceptions import ChordError
from kombu import Queue

from celeriac_celery import enable_rpc_chords
from conftest import BIN, REDIS_HOST, REDIS_PORT, celery_app, eventually, free_port, received_ids, stored_results, wait_for_port

BROKER = "amqp://guest:guest@127.0.0.1:5672//"
TIMEOUT = 60


@pytest.fixture
def queue():
    name = f"celeriac-test-{uuid.uuid4()}"
    yield name
    with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as conn:
        channel = conn.channel()
        channel.queue_delete(name)
        channel.exchange_delete(name)


def redis_url(db):
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def test_a_thousand_tasks_with_rpc_results(queue, make_worker):
    make_worker(BROKER, "rpc://", "-Q", queue)
    app = celery_app(BROKER, "rpc://")
    results = [app.send_task("math.add", (i, i), queue=queue) for i in range(1000)]
    assert [r.get(timeout=TIMEOUT) for r in results] == [2 * i for i in range(1000)]
    with pytest.raises(ZeroDivisionError):
        app.send_task("math.div", (1, 0), queue=queue).get(timeout=TIMEOUT)
    with pytest.raises(TimeLimitExceeded):
        app.send_task("math.spin", (60000,), queue=queue, time_limit=1).get(timeout=TIMEOUT)


def test_a_thousand_tasks_with_redis_results(queue, db, make_worker):
    make_worker(BROKER, redis_url(db), "-Q", queue)
    app = celery_app(BROKER, redis_url(db))
    results = [app.send_task("math.add", (i, i), queue=queue) for i in range(1000)]
    assert [r.get(timeout=TIMEOUT) for r in results] == [2 * i for i in range(1000)]


def test_a_killed_worker_loses_nothing(queue, db, make_worker):
    first = make_worker(BROKER, redis_url(db), "-Q", queue)
    app = celery_app(BROKER, redis_url(db))
    ids = [app.send_task("math.spin", (100,), queue=queue).id for _ in range(60)]
    first.wait_for_log("Task math.spin[")
    time.sleep(0.5)
    first.kill()
    make_worker(BROKER, redis_url(db), "-Q", queue)
    done = stored_results(redis.Redis(REDIS_HOST, REDIS_PORT, db=db), ids, TIMEOUT)
    assert len(done) == len(ids), f"{len(ids) - len(done)} tasks lost"
    assert all(m["status"] == "SUCCESS" for m in done)


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")
def test_closed_connections_are_recovered(queue, db, make_worker):
    worker = make_worker(BROKER, redis_url(db), "-Q", queue)
    app = celery_app(BROKER, redis_url(db))
    ids = [app.send_task("math.spin", (20,), queue=queue).id for _ in range(200)]
    worker.wait_for_log("Task math.spin[")
    subprocess.run(["rabbitmqctl", "close_all_connections", "celeriac test"], check=True, capture_output=True)
    done = stored_results(redis.Redis(REDIS_HOST, REDIS_PORT, db=db), ids, TIMEOUT)
    assert len(done) == len(ids), f"{len(ids) - len(done)} tasks lost:\n{worker.log()[-3000:]}"
    # The worker notices at its next receive, which may come after the last result.
    assert eventually(lambda: "AMQP connection lost; reconnecting" in worker.log(), timeout=10)


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")
def test_quorum_queues_survive_a_killed_worker(queue, db, make_worker):
    quorum = ("--broker-transport-option", "queue_type=quorum")
    first = make_worker(BROKER, redis_url(db), "-Q", queue, *quorum)
    listed = subprocess.run(["rabbitmqctl", "list_queues", "-q", "name", "type"],
                            check=True, capture_output=True, text=True).stdout
    assert f"{queue}\tquorum" in listed, listed
    app = celery_app(BROKER, redis_url(db))
    # The client declares the queue as the worker does, as a Celery user configures it.
    app.conf.task_queues = [Queue(queue, routing_key=queue, queue_arguments={"x-queue-type": "quorum"})]
    ids = [app.send_task("math.spin", (50,), queue=queue).id for _ in range(60)]
    first.wait_for_log("Task math.spin[")
    first.kill()
    make_worker(BROKER, redis_url(db), "-Q", queue, *quorum)
    done = stored_results(redis.Redis(REDIS_HOST, REDIS_PORT, db=db), ids, TIMEOUT)
    assert len(done) == len(ids), f"{len(ids) - len(done)} tasks lost"
    assert all(m["status"] == "SUCCESS" and m["result"] == 50 for m in done)


@pytest.fixture
def tls_rabbitmq():
    """A private RabbitMQ node that listens for amqps only, with a certificate from a CA
    of the test's own: the URL and the CA file."""
    # Not under pytest's tmp_path: the server runs as the rabbitmq user when started as
    # root, and must reach its folder.
    folder = Path(tempfile.mkdtemp(prefix="celeriac-rabbitmq-tls-"))
    folder.chmod(0o755)
    (folder / "mnesia").mkdir()
    (folder / "log").mkdir()

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=celeriac test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost")
    (folder / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.cnf")
    port = free_port()
    (folder / "rabbitmq.conf").write_text(f"""listeners.tcp = none
listeners.ssl.default = {port}
ssl_options.cacertfile = {folder}/ca.pem
ssl_options.certfile = {folder}/server.pem
ssl_options.keyfile = {folder}/server.key
ssl_options.verify = verify_none
loopback_users = none
""")
    (folder / "enabled_plugins").write_text("[].")
    subprocess.run(["chown", "-R", "rabbitmq:", str(folder)], capture_output=True)
    node = f"celeriac-tls-{port}@{socket.gethostname().split('.')[0]}"
    env = dict(os.environ, RABBITMQ_NODENAME=node, RABBITMQ_DIST_PORT=str(free_port()),
               RABBITMQ_CONFIG_FILE=str(folder / "rabbitmq"), RABBITMQ_MNESIA_BASE=str(folder / "mnesia"),
               RABBITMQ_LOG_BASE=str(folder / "log"), RABBITMQ_ENABLED_PLUGINS_FILE=str(folder / "enabled_plugins"),
               RABBITMQ_FEATURE_FLAGS_FILE=str(folder / "feature_flags"), RABBITMQ_PID_FILE=str(folder / "pid"))
    server = subprocess.Popen(["rabbitmq-server"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log = lambda: ":\n" + "".join(p.read_text(errors="replace") for p in (folder / "log").glob("*.log"))
        wait_for_port(port, server, "private RabbitMQ", 60, why=log)
        yield f"amqps://guest:guest@localhost:{port}//", folder / "ca.pem"
    finally:
        subprocess.run(["rabbitmqctl", "-n", node, "stop"], capture_output=True, timeout=60)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(shutil.which("rabbitmq-server") is None or shutil.which("openssl") is None,
                    reason="needs rabbitmq-server and openssl")
def test_amqps_verifies_the_broker_certificate_and_runs_tasks(tls_rabbitmq, db, make_worker, tmp_path):
    url, ca = tls_rabbitmq
    # Without the CA the certificate is refused, and the worker says why.
    refused = subprocess.run([str(BIN), "--broker", url, "--result-backend", redis_url(db), "worker",
                              "--plugins", str(tmp_path), "--http", "off"],
                             capture_output=True, text=True, timeout=60, env=dict(os.environ, SSL_CERT_FILE="/dev/null"))
    assert refused.returncode != 0 and "UnknownIssuer" in refused.stderr, refused.stderr
    make_worker(url, redis_url(db), "-Q", "tls", env={"SSL_CERT_FILE": str(ca)})
    app = celery_app(url, redis_url(db), broker_use_ssl={"ca_certs": str(ca), "cert_reqs": ssl.CERT_REQUIRED})
    results = [app.send_task("math.add", (i, i), queue="tls") for i in range(100)]
    assert [r.get(timeout=TIMEOUT) for r in results] == [2 * i for i in range(100)]


def test_malformed_messages_are_rejected_and_the_worker_goes_on(queue, db, make_worker):
    worker = make_worker(BROKER, redis_url(db), "-Q", queue)
    bad = [
        (b"not json", {"task": "math.add", "id": "not-json"}, "application/json"),
        (b"[[2, 3], {}]", {"task": "math.add", "id": "two-element-body"}, "application/json"),
        (b"[[2, 3], {}, {}]", {"id": "no-task-header"}, "application/json"),
        (b"\x80\x04K\x05.", {"task": "math.add", "id": "pickle-body"}, "application/x-python-serialize"),
    ]
    with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as conn:
        channel = conn.channel()
        for body, headers, content_type in bad:
            message = amqp.Message(body, content_type=content_type, content_encoding="utf-8",
                                   application_headers=headers, delivery_mode=2)
            channel.basic_publish(message, exchange="", routing_key=queue)
    app = celery_app(BROKER, redis_url(db))
    assert app.send_task("math.add", (20, 22), queue=queue).get(timeout=TIMEOUT) == 42
    for _, headers, _ in bad:
        worker.wait_for_log(f"task_id={headers['id']}" if "id" in headers else "rejecting")
    assert worker.log().count("rejecting malformed message") == len(bad)


def test_headers_larger_than_the_first_frame_size_arrive_after_one_reconnect(queue, db, make_worker):
    # A message's headers travel in one frame of the size the worker negotiated. The worker
    # asks for 32 KiB frames first, which keeps its read buffer small; a message whose
    # headers do not fit closes the connection, and the worker reconnects asking for
    # py-amqp's 131072 bytes, so what a Celery client can send arrives, and nothing is lost.
    app = celery_app(BROKER, redis_url(db))
    headers = {"note": "x" * 100_000}
    large = app.send_task("math.add", (2, 3), queue=queue, headers=headers)
    behind = app.send_task("math.add", (4, 5), queue=queue)
    worker = make_worker(BROKER, redis_url(db), "-Q", queue)
    assert large.get(timeout=TIMEOUT) == 5
    assert behind.get(timeout=TIMEOUT) == 9
    assert app.send_task("math.add", (6, 7), queue=queue, headers=headers).get(timeout=TIMEOUT) == 13
    assert worker.log().count("did not fit in one frame") == 1


def ready_count(queue):
    """Messages in `queue` that no consumer holds."""
    with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as conn:
        return conn.channel().queue_declare(queue, passive=True).message_count


def test_messages_behind_a_long_task_go_back_for_an_idle_worker(queue, db, make_worker):
    # RabbitMQ pushes the short tasks to the busy worker with the long one. Once the long
    # task is a second old, the worker stops taking messages and hands back those it
    # holds, so a second worker runs them while the long task goes on.
    busy = make_worker(BROKER, redis_url(db), "-Q", queue, "--concurrency", "1")
    app = celery_app(BROKER, redis_url(db))
    long = app.send_task("math.spin", (8000,), queue=queue)
    busy.wait_for_log(f"Task math.spin[{long.id}] received")
    shorts = [app.send_task("math.spin", (10,), queue=queue) for _ in range(10)]
    assert eventually(lambda: ready_count(queue) == 0), "the busy worker should have been sent them all"
    assert eventually(lambda: ready_count(queue) == 10, timeout=5), "waiting messages were not handed back"
    idle = make_worker(BROKER, redis_url(db), "-Q", queue, "--concurrency", "1")
    assert [r.get(timeout=TIMEOUT) for r in shorts] == [10] * 10
    assert not long.ready(), "the short tasks waited for the long one"
    assert set(received_ids(idle)) == {r.id for r in shorts}
    assert long.get(timeout=TIMEOUT) == 8000
    # With the long task done, the busy worker takes messages ahead again.
    assert [app.send_task("math.add", (i, i), queue=queue).get(timeout=TIMEOUT) for i in range(20)] == [
        2 * i for i in range(20)]


def test_priorities_with_x_max_priority(queue, db, make_worker):
    # The client declares the queue with x-max-priority too (task_queue_max_priority), as
    # a Celery application using priorities on RabbitMQ does; both declarations must agree.
    app = celery_app(BROKER, redis_url(db), task_queue_max_priority=10)
    low = [app.send_task("math.add", (i, 0), queue=queue, priority=0) for i in range(20)]
    high = app.send_task("math.add", (99, 0), queue=queue, priority=9)
    worker = make_worker(BROKER, redis_url(db), "-Q", queue, "--concurrency", "1",
                         "--broker-transport-option", "max_priority=10")
    assert high.get(timeout=TIMEOUT) == 99
    assert [r.get(timeout=TIMEOUT) for r in low] == list(range(20))
    assert received_ids(worker, "math.add")[0] == high.id


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")
def test_malformed_messages_are_dead_lettered_when_the_queue_has_a_dead_letter_exchange(queue, db, make_worker):
    dead = f"{queue}.dead"
    policy = f"celeriac-test-dlx-{uuid.uuid4()}"
    subprocess.run(["rabbitmqctl", "set_policy", "--apply-to", "queues", policy, f"^{queue}$",
                    f'{{"dead-letter-exchange": "{dead}"}}'], check=True, capture_output=True)
    try:
        with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as conn:
            channel = conn.channel()
            channel.exchange_declare(dead, "fanout", durable=False, auto_delete=False)
            channel.queue_declare(dead, durable=False, auto_delete=False)
            channel.queue_bind(dead, dead)
            worker = make_worker(BROKER, redis_url(db), "-Q", queue)
            worker.wait_for_log("celeriac worker ready")
            channel.basic_publish(amqp.Message(b"not json", content_type="application/json",
                                               application_headers={"task": "math.add", "id": "dead-one"}),
                                  exchange="", routing_key=queue)
            deadline = time.time() + TIMEOUT
            message = None
            while message is None and time.time() < deadline:
                message = channel.basic_get(dead, no_ack=True)
                time.sleep(0.05)
            assert message is not None, "the malformed message did not reach the dead-letter queue"
            assert message.body == b"not json"
            assert message.headers["id"] == "dead-one"
            channel.queue_delete(dead)
            channel.exchange_delete(dead)
    finally:
        subprocess.run(["rabbitmqctl", "clear_policy", policy], check=True, capture_output=True)


def test_far_off_etas_wait_in_rabbitmq_delay_queues(queue, db, make_worker):
    worker = make_worker(BROKER, redis_url(db), "-Q", queue, "--concurrency", "1", "--prefetch-multiplier", "1",
                         "--park-eta-after", "1")
    app = celery_app(BROKER, redis_url(db))
    sent = time.monotonic()
    later = [app.send_task("math.add", (i, i), queue=queue, countdown=5) for i in range(10)]
    worker.wait_for_log("parked in the broker")
    # Held by the worker, one waiting task would fill its single reservation (and
    # RabbitMQ's prefetch window) for 5 s.
    assert app.send_task("math.add", (1, 1), queue=queue).get(timeout=3) == 2
    assert not any(r.ready() for r in later), "a parked task ran before its ETA"
    assert [r.get(timeout=TIMEOUT) for r in later] == [2 * i for i in range(10)]
    assert time.monotonic() - sent >= 4.9


def test_chords_on_rpc_which_celery_cannot_run(queue, make_worker):
    make_worker(BROKER, "rpc://", "-Q", queue)
    app = enable_rpc_chords(celery_app(BROKER, "rpc://"))
    add = lambda *args: app.signature("math.add", args, queue=queue)  # noqa: E731
    tsum = app.signature("math.tsum", queue=queue)
    # A chord sent by the client, and one the worker starts (a group followed by a task
    # inside a chain).
    assert chord([add(i, i) for i in range(100)], tsum).apply_async().get(timeout=TIMEOUT) == 9900
    header = group(add(i) for i in range(100))
    assert (add(0, 0) | header | tsum).apply_async().get(timeout=TIMEOUT) == 4950
    failing = (add(1, 1) | group(add(1), app.signature("math.div", (0,), queue=queue)) | tsum).apply_async()
    # Not the header's own error, which Celery's client raises first when it follows parents.
    with pytest.raises(ChordError, match="ZeroDivisionError"):
        failing.get(timeout=TIMEOUT, follow_parents=False)
    # The count queues are gone once each body is sent.
    with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as conn:
        channel = conn.channel()
        with pytest.raises(amqp.exceptions.NotFound):
            channel.queue_declare(f"celeriac.chord.{failing.parent.id}", passive=True)
