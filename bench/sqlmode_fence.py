"""What SQL mode's row-filter fence costs on a 100,000-row table (PostgreSQL, MariaDB, SQLite).

A dataset with a row filter stands in SQL mode as a subquery that no planner may flatten or push the agent's
conditions into (OFFSET 0 on PostgreSQL, a LIMIT no table reaches on MariaDB and SQLite; see
gateway/sqlmode/rewrite.py).
This bench runs the SQL the gateway sends — made by sqlmode.rewrite itself, the filter's value written as a
literal — against the same SQL with the fence taken out (what was sent before, and what leaked), directly on each
database, and prints the ratio fenced / unfenced of the median time per statement.

    python bench/sqlmode_fence.py [--rows 100000] [--runs 15] [--dialects pg,mariadb,sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import table
from connectors.base import Filter
from gateway import sqlmode

ADMIN = {"pg": "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
         "mariadb": "mysql+aiomysql://root@127.0.0.1:3306/"}
GLOT = {"pg": "postgres", "mariadb": "mysql", "sqlite": "sqlite"}
FENCE = {"pg": " OFFSET 0", "mariadb": " LIMIT 18446744073709551615", "sqlite": " LIMIT 9223372036854775807"}
COLUMNS = ["id", "region", "amount", "note"]

# What an agent filtered to two regions of four (half the rows) might ask.
STATEMENTS = {
    "point lookup (id = 54321)": "SELECT id, amount FROM sales WHERE id = 54321",
    "range, 1% of rows": "SELECT id, amount FROM sales WHERE id BETWEEN 20000 AND 20999 ORDER BY id",
    "count with a condition": "SELECT COUNT(*) AS n FROM sales WHERE amount > 500",
    "group by": "SELECT region, COUNT(*) AS n, SUM(amount) AS s FROM sales GROUP BY region",
    "join on the key": "SELECT a.id FROM sales a JOIN sales b ON b.id = a.id + 1 WHERE a.id < 2000",
}


def sent(dialect: str, statement: str) -> str:
    """The SQL the gateway sends for `statement` (rows of regions EU and APAC only), values as literals."""
    tree = sqlmode.parse(statement, GLOT[dialect])
    refs = sqlmode.dataset_references(tree)
    src = sqlmode.Source("sales", "sales", COLUMNS, frozenset(), 100_000,
                         scope=[[Filter("region", "in", ["EU", "APAC"])]])
    done = sqlmode.rewrite(tree, refs, {"sales": src}, GLOT[dialect])
    out = done.sql
    quote = "`" if dialect == "mariadb" else '"'
    for marker, (_, _, value) in done.binds.items():
        out = out.replace(f"{quote}{marker}{quote}", f"'{value}'")
    return out


async def make_table(engine: AsyncEngine, dialect: str, rows: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS sales"))
        await conn.execute(text("CREATE TABLE sales (id INTEGER PRIMARY KEY, region VARCHAR(8) NOT NULL, "
                                "amount NUMERIC(12, 2) NOT NULL, note VARCHAR(40))"))
        await conn.execute(text("CREATE INDEX sales_region ON sales (region)"))
        regions = ["EU", "US", "APAC", "LATAM"]
        batch = [{"id": i, "region": regions[i % 4], "amount": (i * 37) % 1000, "note": f"n{i}"}
                 for i in range(1, rows + 1)]
        for start in range(0, rows, 5000):
            await conn.execute(text("INSERT INTO sales VALUES (:id, :region, :amount, :note)"),
                               batch[start:start + 5000])
        if dialect == "pg":
            await conn.execute(text("ANALYZE sales"))
        elif dialect == "mariadb":
            await conn.execute(text("ANALYZE TABLE sales"))
        else:
            await conn.execute(text("ANALYZE"))


async def timed(engine: AsyncEngine, sql: str, runs: int) -> float:
    async with engine.connect() as conn:
        await conn.exec_driver_sql(sql)  # warm
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            (await conn.exec_driver_sql(sql)).all()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def one_dialect(dialect: str, rows: int, runs: int, scratch: Path) -> list[list[object]]:
    name = f"agentgate_fence_bench_{int(time.time())}"
    admin = None
    if dialect == "sqlite":
        engine = create_async_engine(f"sqlite+aiosqlite:///{scratch / 'fence.db'}")
    else:
        admin = create_async_engine(ADMIN[dialect], isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(text(f"CREATE DATABASE {name}"))
        engine = create_async_engine(f"{ADMIN[dialect].rsplit('/', 1)[0]}/{name}")
    out: list[list[object]] = []
    try:
        await make_table(engine, dialect, rows)
        for label, statement in STATEMENTS.items():
            fenced = sent(dialect, statement)
            assert FENCE[dialect] in fenced, fenced
            unfenced = fenced.replace(FENCE[dialect], "", 1)
            f_ms = await timed(engine, fenced, runs)
            u_ms = await timed(engine, unfenced, runs)
            out.append([dialect, label, u_ms, f_ms, f_ms / u_ms if u_ms else float("nan")])
    finally:
        await engine.dispose()
        if admin is not None:
            async with admin.connect() as conn:
                await conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            await admin.dispose()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--dialects", default="pg,mariadb,sqlite")
    args = parser.parse_args()
    results: list[list[object]] = []
    with tempfile.TemporaryDirectory() as scratch:
        for dialect in args.dialects.split(","):
            results += await one_dialect(dialect, args.rows, args.runs, Path(scratch))
    print(f"SQL mode on a row-filtered dataset of {args.rows:,} rows (filter keeps half): median of {args.runs} runs")
    print(table(["dialect", "statement", "unfenced ms", "fenced ms", "ratio"], results))


if __name__ == "__main__":
    asyncio.run(main())
