"""Chains, groups, chords and link / link_error callbacks built with Celery's own canvas,
run by Celeriac.

Over Redis, a database number per test; chords also with results in PostgreSQL (counted
by Celery's `celery.chord_unlock` task, which Celeriac runs) and over RabbitMQ.
"""

import time
import uuid

import amqp
import pytest
import redis
from celery import chain, chord, group
from celery.exceptions import ChordError
from celery.result import AsyncResult

from conftest import REDIS_HOST, REDIS_PORT, celery_app
from databases import throwaway_database

TIMEOUT = 60


def url(db):
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def test_a_chain_passes_each_result_on(db, make_worker):
    make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    add = lambda *args: app.signature("math.add", args)  # noqa: E731
    result = (add(2, 2) | add(4) | add(8)).apply_async()
    assert result.get(timeout=TIMEOUT) == 16
    assert result.parent.get(timeout=TIMEOUT) == 8
    assert result.parent.parent.get(timeout=TIMEOUT) == 4
    # An immutable step ignores what came before.
    assert (add(1, 1) | app.signature("math.add", (5, 5), immutable=True)).apply_async().get(timeout=TIMEOUT) == 10


def test_a_chain_of_a_hundred_steps(db, make_worker):
    make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    steps = [app.signature("math.add", (0, 1))] + [app.signature("math.add", (1,)) for _ in range(99)]
    assert chain(*steps).apply_async().get(timeout=TIMEOUT) == 100


def test_a_failing_step_stops_the_chain(db, make_worker):
    make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    result = (app.signature("math.div", (1, 0)) | app.signature("math.add", (1,))).apply_async()
    with pytest.raises(ZeroDivisionError):
        result.parent.get(timeout=TIMEOUT)
    time.sleep(1)  # a wrongly sent next step would have run by now
    assert result.state == "PENDING", "the step after a failure must not run"


def test_link_and_link_error_callbacks(db, make_worker):
    make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    on_success = app.signature("math.add", (10,))
    on_success.freeze()
    assert app.send_task("math.add", (2, 3), link=on_success).get(timeout=TIMEOUT) == 5
    assert AsyncResult(on_success.id, app=app).get(timeout=TIMEOUT) == 15

    on_error = app.signature("math.echo", ("failed",))
    on_error.freeze()
    failing = app.send_task("math.div", (1, 0), link_error=on_error)
    with pytest.raises(ZeroDivisionError):
        failing.get(timeout=TIMEOUT)
    # Celery sends an errback that is not a local Python function the failed task's id.
    assert AsyncResult(on_error.id, app=app).get(timeout=TIMEOUT) == [[failing.id, "failed"], {}]


def test_a_chord_of_a_thousand_header_tasks_runs_its_body_once(db, make_worker):
    make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    header = [app.signature("math.add", (i, i)) for i in range(1000)]
    result = chord(header, app.signature("math.tsum")).apply_async()
    assert result.get(timeout=TIMEOUT) == sum(2 * i for i in range(1000))
    assert result.parent.get(timeout=TIMEOUT) == [2 * i for i in range(1000)]
    # Celery's bookkeeping is gone once the body is sent, but for the `done` marker.
    keys = {k.decode() for k in redis.Redis(REDIS_HOST, REDIS_PORT, db).keys(f"celery-taskset-meta-{result.parent.id}*")}
    assert keys == {f"celery-taskset-meta-{result.parent.id}.c"}


def test_a_failed_header_task_fails_the_body_with_a_chord_error(db, make_worker):
    make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    on_error = app.signature("math.echo", ("chord failed",))
    on_error.freeze()
    body = app.signature("math.tsum").on_error(on_error)
    result = chord([app.signature("math.add", (1, 1)), app.signature("math.div", (1, 0))], body).apply_async()
    # Not the header's own error, which Celery's client raises first when it follows parents.
    with pytest.raises(ChordError, match="ZeroDivisionError"):
        result.get(timeout=TIMEOUT, follow_parents=False)
    assert AsyncResult(on_error.id, app=app).get(timeout=TIMEOUT) == [[result.id, "chord failed"], {}]


def test_groups_and_chords_inside_chains(db, make_worker):
    make_worker(url(db), url(db))
    app = celery_app(url(db), url(db))
    add = lambda *args: app.signature("math.add", args)  # noqa: E731
    # A chain ending in a group: the group gets the previous result.
    assert (add(1, 1) | group(add(1), add(2))).apply_async().get(timeout=TIMEOUT) == [3, 4]
    # A group followed by a task is a chord, started by the worker in the middle of the chain.
    result = (add(1, 1) | group(add(1), add(2)) | app.signature("math.tsum") | add(3)).apply_async()
    assert result.get(timeout=TIMEOUT) == 10
    # A chord whose body is a chain.
    result = chord([add(1, 1), add(2, 2)], app.signature("math.tsum") | add(5)).apply_async()
    assert result.get(timeout=TIMEOUT) == 11
    assert result.parent.get(timeout=TIMEOUT) == [2, 4]


@pytest.fixture
def postgres():
    with throwaway_database("postgresql") as database:
        yield database


def test_chords_with_results_in_a_database_are_unlocked_by_the_worker(postgres, db, make_worker):
    make_worker(url(db), postgres.worker_url)
    app = celery_app(url(db), postgres.client_url)
    add = lambda *args: app.signature("math.add", args)  # noqa: E731
    result = chord([add(i, i) for i in range(50)], app.signature("math.tsum")).apply_async()
    assert result.get(timeout=TIMEOUT) == sum(2 * i for i in range(50))
    # Started by the worker: a group followed by a task inside a chain.
    result = (add(1, 1) | group(add(1), add(2)) | app.signature("math.tsum")).apply_async()
    assert result.get(timeout=TIMEOUT) == 7
    failing = chord([add(1, 1), app.signature("math.div", (1, 0))], app.signature("math.tsum")).apply_async()
    # Not the header's own error, which Celery's client raises first when it follows parents.
    with pytest.raises(ChordError, match="ZeroDivisionError"):
        failing.get(timeout=TIMEOUT, follow_parents=False)


def test_a_chord_over_rabbitmq(db, make_worker):
    queue = f"celeriac-test-{uuid.uuid4()}"
    make_worker("amqp://guest:guest@127.0.0.1:5672//", url(db), "-Q", queue)
    app = celery_app("amqp://guest:guest@127.0.0.1:5672//", url(db))
    try:
        header = [app.signature("math.add", (i, 1), queue=queue) for i in range(100)]
        result = chord(header, app.signature("math.tsum", queue=queue)).apply_async()
        assert result.get(timeout=TIMEOUT) == sum(i + 1 for i in range(100))
    finally:
        with amqp.Connection("127.0.0.1:5672", userid="guest", password="guest") as conn:
            conn.channel().queue_delete(queue)


def test_a_task_the_worker_sends_goes_to_the_queue_its_manifest_names(db, make_worker, tmp_path):
    (tmp_path / "plugins.d").mkdir(exist_ok=True)
    (tmp_path / "plugins.d" / "math.toml").write_text('[tasks."math.add"]\nqueue = "adds"\n')
    make_worker(url(db), url(db), "-Q", "celery,adds", "--result-extended")
    app = celery_app(url(db), url(db), result_extended=True)
    result = (app.signature("math.mul", (2, 3)) | app.signature("math.add", (1,))).apply_async()
    assert result.get(timeout=TIMEOUT) == 7
    assert (result.parent.queue, result.queue) == ("celery", "adds")
    # A queue named in the signature still wins.
    result = (app.signature("math.mul", (2, 3)) | app.signature("math.add", (1,), queue="celery")).apply_async()
    assert result.get(timeout=TIMEOUT) == 7 and result.queue == "celery"
