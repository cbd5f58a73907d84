"""SQL sources through SQLAlchemy's async engines (PostgreSQL, MariaDB/MySQL, SQLite).

    engine      make_engine (read-only, time-limited sessions; the source's one pool), seed_sqlite
    connector   SqlConnector, the TableSource: reflection, reads, SQL mode's SELECTs
    statements  building a read's SELECT: checked identifiers, bound values, keyset positions, row filters
    values      a column's Python kind and bad-value message for connectors.values; JSON-ready rows
    reading     connections per read, results a slice at a time, driver errors as the connector's
    pgreader    PostgreSQL reads on asyncpg, on connections borrowed from the engine's pool
    shapes      the statements kept per query shape and the bounds of their caches
"""

from connectors.sql.connector import SqlConnector
from connectors.sql.engine import make_engine, seed_sqlite

__all__ = ["SqlConnector", "make_engine", "seed_sqlite"]
