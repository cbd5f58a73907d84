"""SQL mode: the body -> one validated SELECT. What an agent's statement may be made of (an allow-list of
sqlglot expression classes, plain cast types), how much work it may ask (tokens, nodes, depth, values), and
parsing it, off the event loop when it is long."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, TypeVar

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from connectors.base import MAX_BOUND_VALUES
from gateway.common import inputs
from gateway.common.errors import BadRequest
from gateway.common.inputs import json_body

# SQLAlchemy dialect name -> sqlglot dialect.
DIALECTS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}

# What an agent's SELECT may be made of: sqlglot's expression classes, each allowed deliberately (a test holds an
# example of every one). Anything else — writes, DDL, session and transaction control, locks, SELECT INTO, server
# variables, placeholders, regular expressions, collations, arrays, table functions, syntax sqlglot keeps as an
# opaque command — is refused, so a new sqlglot class is refused until someone allows it.
STRUCTURE = frozenset({
    "Select", "Union", "Intersect", "Except", "Subquery", "From", "Join", "Where", "Group", "Having", "Order",
    "Ordered", "Limit", "Offset", "With", "CTE", "Table", "TableAlias", "Identifier", "Column", "Star", "Alias",
    "Paren", "Distinct", "Window", "WindowSpec", "Tuple",
})
OPERATORS = frozenset({
    "And", "Or", "Not", "Xor", "EQ", "NEQ", "GT", "GTE", "LT", "LTE", "NullSafeEQ", "NullSafeNEQ", "Is", "In",
    "Between", "Exists", "Any", "All", "Like", "ILike", "Escape", "Add", "Sub", "Mul", "Div", "IntDiv", "Mod", "Neg",
    "DPipe", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "Filter",
})
LITERALS = frozenset({"Literal", "Null", "Boolean", "BitString", "HexString", "DataType", "DataTypeParam", "Interval",
                      "Var"})
# Function classes (exp.Func); exp.Anonymous — a name sqlglot does not know — is never one of them.
ALLOWED_FUNCTIONS = frozenset({
    "Count", "Sum", "Avg", "Min", "Max", "Lower", "Upper", "Length", "Coalesce", "Nullif", "Abs", "Round",
    "Floor", "Ceil", "Cast", "Case", "If", "Concat", "ConcatWs", "Substring", "Trim", "Greatest",
    "Least", "Extract", "TimestampTrunc", "Date", "CurrentDate", "CurrentTimestamp",
    "CurrentTime", "RowNumber", "Rank", "DenseRank", "Stddev", "StddevPop", "StddevSamp", "Variance",
    "VariancePop", "Sign", "Left", "Right", "Replace", "StrPosition", "Lag", "Lead", "FirstValue", "LastValue",
    "NthValue", "Ntile", "PercentRank", "CumeDist",
    # Connectives and CASE-like forms that sqlglot models as functions.
    "And", "Or", "Xor", "Exists",
})
ALLOWED_NODES = STRUCTURE | OPERATORS | LITERALS | ALLOWED_FUNCTIONS
# A Var is a bare keyword: a date part or an interval unit, never a name the source resolves.
_VAR_PARENTS = ("Extract", "Interval", "TimestampTrunc", "WindowSpec")
# CAST targets: plain scalar types only (no reg* lookups, arrays, JSON, user-defined or row types).
_T = exp.DataType.Type
PLAIN_TYPES = frozenset({
    _T.BOOLEAN, _T.TINYINT, _T.SMALLINT, _T.INT, _T.BIGINT, _T.UTINYINT, _T.USMALLINT, _T.UINT, _T.UBIGINT,
    _T.DECIMAL, _T.FLOAT, _T.DOUBLE, _T.CHAR, _T.NCHAR, _T.VARCHAR, _T.NVARCHAR, _T.TEXT, _T.DATE, _T.TIME,
    _T.DATETIME, _T.TIMESTAMP, _T.TIMESTAMPTZ,
})

MAX_SQL_CHARS = 100_000
# The work one statement may ask of the parser, the checks and the source: tokens (estimated before sqlglot
# parses, which costs about 15 us a character), nodes of the parsed tree, nesting depth (a run of one operator,
# `a OR b OR c`, counts once), and values written in it (literals, and IN-list items that are not literals).
MAX_SQL_TOKENS = 12_000
MAX_SQL_NODES = 5_000
MAX_SQL_DEPTH = 128
MAX_SQL_VALUES = MAX_BOUND_VALUES
# Longer SQL is parsed and rewritten in a worker thread: sqlglot would hold the event loop over ~5 ms.
ON_LOOP_CHARS = 256
_TOKENS = re.compile(r"\w+|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`(?:[^`]|``)*`|\S")
_VALUES = (exp.Literal, exp.HexString, exp.BitString, exp.Null, exp.Boolean)


# The body as JSON Schema (the OpenAPI document's): what parse_body takes, from its own limit. A NUL or a lone
# surrogate in the text (no driver can send them) is refused too; the pattern states the NUL only.
BODY_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["sql"],
    "properties": {"sql": {
        "type": "string", "minLength": 1, "maxLength": MAX_SQL_CHARS,
        "pattern": "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$",
        "description": "one SELECT (or a UNION / INTERSECT / EXCEPT of SELECTs) in which datasets stand as tables",
        "examples": ["SELECT country, count(*) AS n FROM some_dataset GROUP BY country"]}},
}


def parse_body(body: bytes | None) -> str:
    """The body {"sql": "SELECT ..."} -> the SQL text; anything else is a 400."""
    if not body:
        raise BadRequest('the body must be a JSON object {"sql": "SELECT ..."}')
    data = json_body(body)
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object {"sql": "SELECT ..."}')
    unknown = sorted(set(data) - set(BODY_SCHEMA["properties"]))
    if unknown:
        raise BadRequest(f"unknown keys in the body: {', '.join(map(repr, unknown))}")
    sql = data.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        raise BadRequest('"sql" must be a non-empty string')
    if len(sql) > MAX_SQL_CHARS or not inputs.holdable(sql):
        # A lone surrogate (`\ud800` in the JSON) is no UTF-8: no driver can send it (asyncpg failed mid-protocol
        # on it and left its connection unusable for the next agent).
        raise BadRequest("the SQL is too long or holds a NUL character or a lone surrogate")
    return sql


def parse(sql: str, dialect: str) -> exp.Query:
    """One validated SELECT (or set operation of SELECTs), identifiers normalised as the dialect does."""
    tokens = sum(1 for _ in _TOKENS.finditer(sql))
    if tokens > MAX_SQL_TOKENS:
        raise BadRequest(f"the SQL is too large: about {tokens} tokens, at most {MAX_SQL_TOKENS}")
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except (SqlglotError, ValueError, RecursionError) as exc:
        raise BadRequest(f"the SQL does not parse: {str(exc).splitlines()[0][:200]}") from None
    if len(statements) != 1:
        raise BadRequest("send exactly one SELECT statement")
    tree = statements[0]
    if not isinstance(tree, (exp.Select, exp.SetOperation)):
        raise BadRequest("only a SELECT is allowed")
    for node in tree.walk():
        _check_node(node, dialect)
    _check_size(tree)
    normalised = normalize_identifiers(tree, dialect=dialect)
    assert isinstance(normalised, (exp.Select, exp.SetOperation))
    return normalised


T = TypeVar("T")


async def off_loop(sql: str, work: Callable[..., T], *args: Any) -> T:
    """`work(*args)` (parsing or rewriting `sql`), in a worker thread when `sql` is long enough for sqlglot to hold
    the event loop (ON_LOOP_CHARS): other requests, /healthz included, are served meanwhile."""
    if len(sql) <= ON_LOOP_CHARS:
        return work(*args)
    return await asyncio.to_thread(work, *args)


def _check_size(tree: exp.Expr) -> None:
    """Refuse a statement over MAX_SQL_NODES nodes, MAX_SQL_DEPTH levels or MAX_SQL_VALUES values."""
    depths: dict[int, int] = {}
    values = deepest = 0
    for nodes, node in enumerate(tree.walk(), 1):  # parents before their children
        if nodes > MAX_SQL_NODES:
            raise BadRequest(f"the SQL is too large: more than {MAX_SQL_NODES} parts")
        parent = node.parent
        chained = type(parent) is type(node) and isinstance(node, (exp.Connector, exp.Binary))
        depth = depths[id(node)] = depths.get(id(parent), 0) + (0 if chained else 1)
        deepest = max(deepest, depth)
        if isinstance(node, _VALUES) or (isinstance(parent, exp.In) and node.arg_key == "expressions"
                                         and node.find(*_VALUES) is None):  # an item holding no literal of its own
            values += 1
    if deepest > MAX_SQL_DEPTH:
        raise BadRequest(f"the SQL is nested too deeply: {deepest} levels, at most {MAX_SQL_DEPTH}")
    if values > MAX_SQL_VALUES:
        raise BadRequest(f"the SQL holds {values} values (literals and IN-list items); at most {MAX_SQL_VALUES}")


def _check_node(node: exp.Expr, dialect: str) -> None:
    """Refuse a node whose class is not allowed (see ALLOWED_NODES), a cast to a type that is not plain, and a bare
    keyword outside the places that take one."""
    kind = type(node).__name__
    if kind not in ALLOWED_NODES:
        if isinstance(node, exp.Func):
            name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
            raise BadRequest(f"function {name!r} is not allowed in SQL mode")
        raise BadRequest(f"only a plain read-only SELECT is allowed ({kind.upper()} is not)")
    if isinstance(node, exp.DataType) and node.this not in PLAIN_TYPES:
        raise BadRequest(f"a cast to {node.sql(dialect=dialect)[:60]!r} is not allowed in SQL mode (plain types only)")
    if isinstance(node, exp.Var) and type(node.parent).__name__ not in _VAR_PARENTS:
        raise BadRequest(f"{node.name[:60]!r} is not allowed here in SQL mode")
