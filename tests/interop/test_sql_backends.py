"""Results in PostgreSQL and MySQL/MariaDB, written by Celeriac and read by Celery's own
database backend (SQLAlchemy, with psycopg2 and PyMySQL).

Tasks travel over Redis (a database number of the test's own); results go to a database
created for the test and dropped after it, so tests never see each other's rows.
PostgreSQL (127.0.0.1:5432, trust) and MariaDB (127.0.0.1:3306, root without password)
must be running; `make test` starts them when they are installed (tests/services.sh).
"""

import uuid
from dataclasses import dataclass

import psycopg2
import pymysql
import pytest

from conftest import REDIS_HOST, REDIS_PORT, celery_app

TIMEOUT = 60
PG = dict(host="127.0.0.1", port=5432, user="postgres")
MYSQL = dict(host="127.0.0.1", port=3306, user="root", password="")


@dataclass
class Database:
    kind: str
    name: str
    worker_url: str  # as users give it to Celeriac
    client_url: str  # as a Celery application names it, with its SQLAlchemy driver

    def rows(self, sql, *params):
        if self.kind == "postgresql":
            with psycopg2.connect(dbname=self.name, **PG) as conn, conn.cursor() as cursor:
                cursor.execute(sql.replace("?", "%s"), params)
                return cursor.fetchall()
        conn = pymysql.connect(database=self.name, **MYSQL)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql.replace("?", "%s"), params)
                return cursor.fetchall()
        finally:
            conn.close()


@pytest.fixture(params=["postgresql", "mysql"])
def database(request):
    name = f"celeriac_{uuid.uuid4().hex[:12]}"
    if request.param == "postgresql":
        admin = psycopg2.connect(dbname="postgres", **PG)
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        yield Database("postgresql", name, f"db+postgresql://postgres@127.0.0.1:5432/{name}",
                       f"db+postgresql+psycopg2://postgres@127.0.0.1:5432/{name}")
        admin.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()
    else:
        admin = pymysql.connect(autocommit=True, **MYSQL)
        admin.cursor().execute(f"CREATE DATABASE `{name}`")
        yield Database("mysql", name, f"db+mysql://root@127.0.0.1:3306/{name}",
                       f"db+mysql+pymysql://root@127.0.0.1:3306/{name}")
        admin.cursor().execute(f"DROP DATABASE `{name}`")
        admin.close()


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
