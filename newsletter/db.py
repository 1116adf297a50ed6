"""Engine and session factory, and schema migration through Alembic."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, any_, bindparam, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the web page and the CLI read while a worker writes; busy_timeout waits for the lock
    # instead of failing at once.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def normalise_url(url: str) -> str:
    """Map ``postgresql://`` and ``postgres://`` to the psycopg 3 driver SQLAlchemy should use."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_transient_db_error(exc: BaseException) -> bool:
    """True for a lost or refused database connection (a restart, a fail-over, a locked SQLite file):
    worth trying again on a fresh connection. Constraint violations and bad SQL are not."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def dialect_insert(session: Session, entity: Any) -> Any:
    """An ``INSERT`` for ``entity`` from the session's dialect (PostgreSQL or SQLite), so the caller can
    add ``ON CONFLICT`` (`on_conflict_do_nothing` / `on_conflict_do_update`): what keeps a step that two
    processes may run at once (at-least-once tasks, a restarted pipeline) from failing on a unique key."""
    from sqlalchemy.dialects import postgresql, sqlite

    module: Any = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return module.insert(entity)


def in_values(session: Session, column: Any, values: Iterable[Any]) -> Any:
    """``column IN (values)``; on PostgreSQL ``column = ANY(:array)``: one parameter, so the statement's
    text stays short and the same for any number of values, and psycopg converts it once and prepares
    it (an IN list of a batch's 100 ids is 100 parameters in a 4 kB text, which psycopg parses again
    on every call: a tenth of a worker's CPU per batch)."""
    values = list(values)
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        return column == any_(bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)


def first_line(exc: BaseException) -> str:
    """The first line of a database error's own message (no SQL, no parameters), for a log line."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@cache
def get_engine(url: str) -> Engine:
    """One engine per database URL and process. SQLite files get their parent folder created."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def session_factory(url: str) -> sessionmaker[Session]:
    """A sessionmaker bound to the engine for ``url``; objects stay readable after commit."""
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with session_factory(url)() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(url: str) -> Any:
    """An Alembic ``Config`` pointing at the packaged migrations and ``url``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def current_revision(url: str) -> str | None:
    """The Alembic revision the database at ``url`` is at (None for an empty database).

    Read from Alembic's own ``alembic_version`` table with one query: importing Alembic to ask it costs
    more than the rest of a short CLI command (about 0.3 s of CPU)."""
    from sqlalchemy import inspect, text

    with get_engine(url).connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(versions) > 1:
        raise SchemaOutOfDate(f"the database is at several schema revisions at once ({', '.join(sorted(versions))})")
    return versions[0] if versions else None


class SchemaOutOfDate(RuntimeError):
    """The database's schema is not the one this version of the code needs."""


_REVISION_LINE = re.compile(r"""^(down_revision|revision)\s*(?::[^=]*)?=\s*(None|["']([^"']+)["'])""", re.MULTILINE)


@cache
def head_revision() -> str:
    """The newest migration shipped with this code: the revision no other migration names as its
    ``down_revision``. Read from the migration files' ``revision = "…"`` / ``down_revision = "…"`` lines
    without importing Alembic (a test checks it against Alembic's own ``get_current_head``).

    Raises:
        RuntimeError: the migrations have no single head (a merge migration is missing).
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        for name, _value, quoted in _REVISION_LINE.findall(path.read_text(encoding="utf-8")):
            if quoted:
                (revisions if name == "revision" else parents).add(quoted)
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the packaged migrations have {len(heads)} heads: {', '.join(sorted(heads)) or 'none'}")
    return heads.pop()


@cache
def check_schema(url: str) -> None:
    """Raise unless the database at ``url`` is migrated to `head_revision` (checked once per process).

    Raises:
        SchemaOutOfDate: with the command that fixes it.
    """
    current, head = current_revision(url), head_revision()
    if current != head:
        where = "no schema yet" if current is None else f"schema revision {current}"
        raise SchemaOutOfDate(f"the database has {where}; this version needs {head}: run 'newsletter db upgrade'")


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (default: the newest)."""
    from alembic import command

    get_engine(url)  # creates the SQLite parent folder
    command.upgrade(alembic_config(url), revision)
    check_schema.cache_clear()
