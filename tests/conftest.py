"""Shared fixtures."""

import pytest


@pytest.fixture
def procs():
    """Processes a test starts (mbt.driver.Process/Console); all stopped at the end."""
    started = []
    yield started
    for p in reversed(started):
        p.stop(5)


# -- PostgreSQL: one private server per test session, one database per test ----------

_PG = {}


def _pg_server():
    """The session's PostgreSQL server (started on first use), or skip with the reason."""
    if "server" not in _PG:
        try:
            import psycopg  # noqa: F401
            from tests.pgserver import PgServer
            _PG["server"] = PgServer()
        except (ImportError, RuntimeError, OSError) as e:
            _PG["server"] = None
            _PG["why"] = str(e)
    if _PG["server"] is None:
        pytest.skip("no PostgreSQL for the tests: %s (make test installs it)" % _PG["why"])
    return _PG["server"]


def pytest_sessionfinish(session, exitstatus):
    server = _PG.pop("server", None)
    if server is not None:
        server.close()


@pytest.fixture
def pg_server():
    """The session's private PostgreSQL server (tests that restart it use this)."""
    return _pg_server()


@pytest.fixture
def pg_url(pg_server):
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_kind(request):
    """Run a tracker test once per store: the SQLite default and a PostgreSQL database."""
    return request.param


@pytest.fixture
def store_url(store_kind):
    """None for the SQLite store, else a fresh database's URL."""
    if store_kind == "sqlite":
        return None
    return _pg_server().new_database()
