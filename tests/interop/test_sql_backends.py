"""Results in PostgreSQL and MySQL/MariaDB, written by Celeriac and read by Celery's own
database backend (SQLAlchemy, with psycopg2 and PyMySQL).

Tasks travel over Redis (a database number of the test's own); results go to a database
created for the test and dropped after it (`databases.py`). The SQS and ZooKeeper tests
read their results from PostgreSQL and MySQL too.
"""

import pytest

from conftest import REDIS_HOST, REDIS_PORT, celery_app
from databases import throwaway_database

TIMEOUT = 60


@pytest.fixture(params=["postgresql", "mysql"])
def database(request):
    with throwaway_database(request.param) as database:
        yield database


def broker(db):
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def test_results_and_failures_read_by_celerys_database_backend(database, db, make_worker):
    make_worker(broker(db), database.worker_url)
    app = celery_app(broker(db), database.client_url)
    results = [app.send_task("math.add", (i, i)) for i in range(200)]
    assert [r.get(timeout=TIMEOUT) for r in results] == [2 * i for i in range(200)]
    payload = {"text": "héllo", "n": [1, 2.5, None]}
    assert app.send_task("math.echo", (payload,)).get(timeout=TIMEOUT) == [[payload], {}]
    with pytest.raises(ZeroDivisionError):
        app.send_task("math.div", (1, 0)).get(timeout=TIMEOUT)
    statuses = dict(database.rows("SELECT status, COUNT(*) FROM celery_taskmeta GROUP BY status"))
    assert statuses == {"SUCCESS": 201, "FAILURE": 1}


def test_extended_results_fill_celerys_columns(database, db, make_worker):
    make_worker(broker(db), database.worker_url, "--result-extended", "--hostname", "celeriac@sql-test")
    app = celery_app(broker(db), database.client_url, result_extended=True)
    result = app.send_task("math.add", (2, 3))
    assert result.get(timeout=TIMEOUT) == 5
    [(name, worker, queue, retries, date_done)] = database.rows(
        "SELECT name, worker, queue, retries, date_done FROM celery_taskmeta WHERE task_id = ?", result.id)
    assert (name, worker, queue, retries) == ("math.add", "celeriac@sql-test", "celery", 0)
    assert date_done is not None
    assert result.name == "math.add" and result.args == [2, 3]
