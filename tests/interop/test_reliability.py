"""Delivery promises forced at their worst moments, from the real Python client.

- A worker aborts at the exact point between two steps of finishing a task
  (`CELERIAC_FAULT`, see host/src/worker/fault.rs): the redelivered copy must not run or
  publish a second time.
- kill -9 of one of two workers with 1,000 tasks in flight.
- The broker restarts under load.
- The result backend is away for a while: nothing is acked until its result is stored.

Each test runs on Redis and on RabbitMQ where both apply, on queues of its own.
"""

import subprocess
import shutil
import time
import uuid
import urllib.request

import amqp
import pytest
import redis
from celery import chain

from conftest import REDIS_HOST, REDIS_PORT, celery_app, free_port, start_redis, stored_results

TIMEOUT = 90
AMQP = "amqp://guest:guest@127.0.0.1:5672//"
# Short leases, so a dead worker's Redis messages come back within seconds.
LEASE = ("--broker-transport-option", "visibility_timeout=3")


class Broker:
    """A broker URL and a queue of the test's own on it."""

    def __init__(self, kind, db):
        self.kind = kind
        self.queue = f"celeriac-test-{uuid.uuid4()}"
        self.url = AMQP if kind == "amqp" else f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
        # Redis leases expire; RabbitMQ hands a dead connection's messages back at once.
        self.options = ("-Q", self.queue, *(LEASE if kind == "redis" else ()))

    def delete_queue(self):
        if self.kind == "amqp":
            with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as conn:
                conn.channel().queue_delete(self.queue)


@pytest.fixture(params=["redis", "amqp"])
def broker(request, db):
    broker = Broker(request.param, db)
    yield broker
    broker.delete_queue()


def results_url(db):
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def succeeded(workers, task_id):
    """How many times the workers ran `task_id` to success, from their logs."""
    return sum(w.log().count(f"[{task_id}] succeeded in") for w in workers)


def one_at_a_time(broker):
    # One slot and one reserved message: the worker takes nothing while it finishes a task.
    return (*broker.options, "--concurrency", "1", "--prefetch-multiplier", "1")


def crash_then_recover(broker, db, make_worker, fault):
    """Send the chain mul(3, 4) | add(1) to a worker that aborts at `fault` (a point, see
    host/src/worker/fault.rs) in `math.mul`, then start a healthy one; return both workers
    and the chain's result, once it is 13."""
    first = make_worker(broker.url, results_url(db), *one_at_a_time(broker),
                        env={"CELERIAC_FAULT": f"{fault}:math.mul"})
    app = celery_app(broker.url, results_url(db))
    result = chain(app.signature("math.mul", (3, 4), queue=broker.queue),
                   app.signature("math.add", (1,), queue=broker.queue)).apply_async()
    assert first.process.wait(timeout=TIMEOUT) != 0
    second = make_worker(broker.url, results_url(db), *one_at_a_time(broker))
    assert result.get(timeout=TIMEOUT) == 13
    return first, second, result


def test_a_task_redelivered_after_it_finished_does_not_run_or_chain_again(broker, db, make_worker):
    # Result stored, next step published, message not acked: then the worker dies.
    first, second, result = crash_then_recover(broker, db, make_worker, "before-ack")
    parent = result.parent.id
    second.wait_for_log(f"[{parent}] already finished before this delivery")
    assert succeeded([first, second], parent) == 1
    assert succeeded([first, second], result.id) == 1
    assert "celeriac_redeliveries_skipped_total 1" in metrics(second)


def test_a_rerun_after_a_crash_before_its_result_was_stored_does_not_chain_twice(broker, db, make_worker):
    # Next step published, result not stored: the task must run again, the step must not.
    first, second, result = crash_then_recover(broker, db, make_worker, "before-store")
    second.wait_for_log(f"[{result.id}] already finished before this delivery")
    assert succeeded([first, second], result.parent.id) == 2
    assert succeeded([first, second], result.id) == 1


def metrics(worker):
    return urllib.request.urlopen(worker.status_url() + "/metrics", timeout=10).read().decode()


def test_killing_one_of_two_workers_with_a_thousand_tasks_in_flight_loses_nothing(broker, db, make_worker):
    workers = [make_worker(broker.url, results_url(db), *broker.options) for _ in range(2)]
    app = celery_app(broker.url, results_url(db))
    ids = [app.send_task("math.spin", (10,), queue=broker.queue).id for _ in range(1000)]
    workers[0].wait_for_log("succeeded in")
    time.sleep(1)
    workers[0].kill()
    done = stored_results(redis.Redis(REDIS_HOST, REDIS_PORT, db=db), ids, TIMEOUT)
    assert len(done) == len(ids), f"{len(ids) - len(done)} tasks lost"
    assert all(m["status"] == "SUCCESS" and m["result"] == 10 for m in done)


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_a_redis_broker_restarting_under_load_loses_nothing(tmp_path, make_worker):
    port = free_port()
    server = start_redis(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(2):
            make_worker(url, url, *LEASE)
        app = celery_app(url, url)
        ids = [app.send_task("math.spin", (10,)).id for _ in range(1000)]
        time.sleep(1)
        redis.Redis("127.0.0.1", port).shutdown()  # persists the append-only file
        server.wait(timeout=10)
        time.sleep(2)
        server = start_redis(port, tmp_path)
        done = stored_results(redis.Redis("127.0.0.1", port), ids, TIMEOUT)
        assert len(done) == len(ids), f"{len(ids) - len(done)} tasks lost"
        assert all(m["status"] == "SUCCESS" and m["result"] == 10 for m in done)
    finally:
        server.terminate()
        server.wait(timeout=10)


def rabbitmqctl(*args):
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl")
def test_rabbitmq_restarting_under_load_loses_nothing(db, make_worker):
    broker = Broker("amqp", db)
    try:
        for _ in range(2):
            make_worker(broker.url, results_url(db), *broker.options)
        app = celery_app(broker.url, results_url(db))
        ids = [app.send_task("math.spin", (10,), queue=broker.queue).id for _ in range(1000)]
        time.sleep(1)
        # The RabbitMQ application stops (every connection drops) and starts again; its
        # durable queues keep the persistent messages Celery sends.
        rabbitmqctl("stop_app")
        try:
            time.sleep(2)
        finally:
            rabbitmqctl("start_app")
            rabbitmqctl("await_startup")
        done = stored_results(redis.Redis(REDIS_HOST, REDIS_PORT, db=db), ids, TIMEOUT)
        assert len(done) == len(ids), f"{len(ids) - len(done)} tasks lost"
        assert all(m["status"] == "SUCCESS" and m["result"] == 10 for m in done)
    finally:
        broker.delete_queue()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_a_result_backend_away_for_a_while_delays_results_but_loses_none(broker, tmp_path, make_worker):
    port = free_port()
    server = start_redis(port, tmp_path)
    backend = f"redis://127.0.0.1:{port}/0"
    try:
        worker = make_worker(broker.url, backend, *broker.options)
        # A client without the backend: Celery's own cannot send while its backend is down.
        app = celery_app(broker.url, None)
        results = redis.Redis("127.0.0.1", port)
        first = app.send_task("math.add", (1, 1), queue=broker.queue).id
        assert stored_results(results, [first], TIMEOUT)[0]["result"] == 2
        results.shutdown()
        server.wait(timeout=10)
        ids = [app.send_task("math.add", (i, i), queue=broker.queue).id for i in range(20)]
        worker.wait_for_log("cannot store result; returning the message to the queue")
        assert "celeriac_result_store_errors_total" in metrics(worker)
        time.sleep(3)
        server = start_redis(port, tmp_path)
        done = stored_results(results, ids, TIMEOUT)
        assert len(done) == len(ids), f"{len(ids) - len(done)} results lost"
        assert sorted(m["result"] for m in done) == sorted(2 * i for i in range(20))
    finally:
        server.terminate()
        server.wait(timeout=10)
