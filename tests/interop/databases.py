"""Throwaway PostgreSQL and MySQL/MariaDB databases for result-backend tests.

Each is created for one test and dropped after it, so tests never see each other's rows.
PostgreSQL (127.0.0.1:5432, user postgres, trust) and MariaDB (127.0.0.1:3306, root
without password) must be running; `make test` starts them when they are installed.
"""

import contextlib
import uuid
from dataclasses import dataclass

import psycopg2
import pymysql

PG = dict(host="127.0.0.1", port=5432, user="postgres")
MYSQL = dict(host="127.0.0.1", port=3306, user="root", password="")


@dataclass
class Database:
    kind: str
    name: str
    worker_url: str  # as users give it to Celeriac
    client_url: str  # as a Celery application names it, with its SQLAlchemy driver

    def rows(self, sql, *params):
        """Run one query (`?` placeholders) and return its rows."""
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


@contextlib.contextmanager
def throwaway_database(kind):
    """A new, empty database of `kind` ("postgresql" or "mysql"), dropped on exit."""
    name = f"celeriac_{uuid.uuid4().hex[:12]}"
    if kind == "postgresql":
        admin = psycopg2.connect(dbname="postgres", **PG)
        admin.autocommit = True
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        try:
            yield Database(kind, name, f"db+postgresql://postgres@127.0.0.1:5432/{name}",
                           f"db+postgresql+psycopg2://postgres@127.0.0.1:5432/{name}")
        finally:
            admin.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            admin.close()
    else:
        admin = pymysql.connect(autocommit=True, **MYSQL)
        admin.cursor().execute(f"CREATE DATABASE `{name}`")
        try:
            yield Database(kind, name, f"db+mysql://root@127.0.0.1:3306/{name}",
                           f"db+mysql+pymysql://root@127.0.0.1:3306/{name}")
        finally:
            admin.cursor().execute(f"DROP DATABASE `{name}`")
            admin.close()
