"""Python Celery clients over SQS against Celeriac, with results on Redis.

The SQS server is moto's (PyPI `moto[server]`), started here on a free loopback port for
this module and stopped after it; each test names its queues with a prefix of its own.
"""

import base64
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest
import redis

from conftest import BIN, PLUGINS, REDIS_HOST, REDIS_PORT, celery_app, eventually, free_port, received_ids, stored_results, wait_for_port
from databases import throwaway_database

TIMEOUT = 60


@pytest.fixture(scope="module")
def sqs_endpoint():
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, server, "moto_server", 30)
    yield f"127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)


class Sqs:
    """One test's view of the server: its queue prefix, and the options both sides share."""

    def __init__(self, endpoint, **options):
        self.endpoint = endpoint
        self.url = f"sqs://test:test@{endpoint}"
        self.options = {"region": "us-east-1", "queue_name_prefix": f"t{uuid.uuid4().hex[:10]}-", **options}

    def worker_args(self, *extra):
        args = []
        for key, value in self.options.items():
            args += ["--broker-transport-option", f"{key}={value}"]
        return [*args, *extra]

    def client(self):
        return boto3.client("sqs", endpoint_url=f"http://{self.endpoint}", region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")

    def queue_url(self, queue="celery"):
        return self.client().get_queue_url(QueueName=self.options["queue_name_prefix"] + queue)["QueueUrl"]

    def waiting(self, queue="celery"):
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attributes = self.client().get_queue_attributes(QueueUrl=self.queue_url(queue), AttributeNames=names)
        return sum(int(attributes["Attributes"][n]) for n in names)


def backend(db):
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def test_tasks_and_failures_over_sqs_with_results_in_postgresql(sqs_endpoint, make_worker):
    sqs = Sqs(sqs_endpoint)
    with throwaway_database("postgresql") as database:
        make_worker(sqs.url, database.worker_url, *sqs.worker_args())
        app = celery_app(sqs.url, database.client_url, broker_transport_options=sqs.options)
        results = [app.send_task("math.add", (i, i)) for i in range(100)]
        assert [r.get(timeout=TIMEOUT) for r in results] == [2 * i for i in range(100)]
        with pytest.raises(ZeroDivisionError):
            app.send_task("math.div", (1, 0)).get(timeout=TIMEOUT)
    assert eventually(lambda: sqs.waiting() == 0), "acknowledged messages must be deleted"


def test_a_killed_worker_loses_nothing(sqs_endpoint, db, make_worker):
    # Nothing is deleted before its result is stored: what the killed worker held comes
    # back after the visibility timeout and the next worker completes it.
    sqs = Sqs(sqs_endpoint, visibility_timeout=3)
    first = make_worker(sqs.url, backend(db), *sqs.worker_args())
    app = celery_app(sqs.url, backend(db), broker_transport_options=sqs.options)
    ids = [app.send_task("math.spin", (1500,)).id for _ in range(6)]
    first.wait_for_log("Task math.spin[")
    first.kill()
    assert any(r is None for r in redis.Redis(REDIS_HOST, REDIS_PORT, db=db).mget(
        [f"celery-task-meta-{i}" for i in ids])), "the worker finished everything before it was killed"
    make_worker(sqs.url, backend(db), *sqs.worker_args())
    done = stored_results(redis.Redis(REDIS_HOST, REDIS_PORT, db=db), ids, TIMEOUT)
    assert len(done) == len(ids), f"{len(ids) - len(done)} tasks lost"
    assert all(m["status"] == "SUCCESS" for m in done)


def test_a_task_longer_than_the_visibility_timeout_runs_once(sqs_endpoint, db, make_worker):
    sqs = Sqs(sqs_endpoint, visibility_timeout=2)
    workers = [make_worker(sqs.url, backend(db), *sqs.worker_args()) for _ in range(2)]
    app = celery_app(sqs.url, backend(db), broker_transport_options=sqs.options)
    result = app.send_task("math.spin", (6000,))
    assert result.get(timeout=TIMEOUT) == 6000
    time.sleep(1)
    runs = sum(received_ids(w, "math.spin").count(result.id) for w in workers)
    assert runs == 1, f"ran {runs} times"


def test_malformed_messages_are_rejected_and_the_worker_goes_on(sqs_endpoint, db, make_worker):
    sqs = Sqs(sqs_endpoint)
    worker = make_worker(sqs.url, backend(db), *sqs.worker_args())
    url = sqs.queue_url()
    bad = ["not base64, not json", base64.b64encode(b"[1, 2]").decode(),
           base64.b64encode(b'{"body": "!!", "headers": {"id": "bad-body"}, "properties": {}}').decode()]
    for body in bad:
        sqs.client().send_message(QueueUrl=url, MessageBody=body)
    app = celery_app(sqs.url, backend(db), broker_transport_options=sqs.options)
    assert app.send_task("math.add", (20, 22)).get(timeout=TIMEOUT) == 42
    deadline = time.time() + TIMEOUT
    while worker.log().count("rejecting malformed message") < len(bad) and time.time() < deadline:
        time.sleep(0.1)
    assert worker.log().count("rejecting malformed message") == len(bad), worker.log()[-3000:]
    assert eventually(lambda: sqs.waiting() == 0), "rejected messages must be deleted, not redelivered"


def test_fifo_queues(sqs_endpoint, db, make_worker):
    # kombu creates `<prefix>jobs.fifo` as a FIFO queue and sends with MessageGroupId
    # "default": one group.
    sqs = Sqs(sqs_endpoint)
    make_worker(sqs.url, backend(db), *sqs.worker_args("-Q", "jobs.fifo", "--concurrency", "1"))
    app = celery_app(sqs.url, backend(db), broker_transport_options=sqs.options)
    results = [app.send_task("math.add", (i, 0), queue="jobs.fifo") for i in range(20)]
    assert [r.get(timeout=TIMEOUT) for r in results] == list(range(20))
    attributes = sqs.client().get_queue_attributes(QueueUrl=sqs.queue_url("jobs.fifo"), AttributeNames=["FifoQueue"])
    assert attributes["Attributes"]["FifoQueue"] == "true"


def test_fifo_queues_run_in_order(sqs_endpoint, db, make_worker):
    # Two slots: order must come from the queue's message group, not from a single slot.
    sqs = Sqs(sqs_endpoint)
    make_worker(sqs.url, backend(db), *sqs.worker_args("-Q", "jobs.fifo", "--concurrency", "2"))
    app = celery_app(sqs.url, backend(db), broker_transport_options=sqs.options)
    results = [app.send_task("math.add", (i, 0), queue="jobs.fifo") for i in range(20)]
    assert [r.get(timeout=TIMEOUT) for r in results] == list(range(20))
    metas = stored_results(redis.Redis(REDIS_HOST, REDIS_PORT, db=db), [r.id for r in results])
    assert [m["task_id"] for m in sorted(metas, key=lambda m: m["date_done"])] == [r.id for r in results]


def test_predefined_queues_are_used_as_given(sqs_endpoint, db, make_worker):
    sqs = Sqs(sqs_endpoint)
    name = sqs.options["queue_name_prefix"] + "celery"
    url = sqs.client().create_queue(QueueName=name)["QueueUrl"]
    predefined = {"predefined_queues": json.dumps({name: {"url": url}})}
    make_worker(sqs.url, backend(db), *Sqs(sqs_endpoint, **sqs.options, **predefined).worker_args())
    app = celery_app(sqs.url, backend(db), broker_transport_options={
        **sqs.options, "predefined_queues": {name: {"url": url, "access_key_id": "test", "secret_access_key": "test"}}})
    assert app.send_task("math.add", (2, 3)).get(timeout=TIMEOUT) == 5
    # A queue not listed is refused, not created.
    refused = subprocess.run(
        [str(BIN), "--broker", sqs.url, "--result-backend", backend(db), "worker", "--plugins", str(PLUGINS),
         *Sqs(sqs_endpoint, **sqs.options, **predefined).worker_args("-Q", "other")],
        capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "is not in predefined_queues" in refused.stderr, refused.stderr[-2000:]
