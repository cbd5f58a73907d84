"""Row filters: which rows of a dataset an agent sees, per role, with values from its token's claims.

In ``datasets.toml``::

    [datasets.orders.row_filters]
    sales-emea = "region = {claims.region}"
    sales-lead = "region in {claims.regions} and status != 'cancelled'"
    auditor    = "true"                       # every row

A key is a role (or an agent's own name, or ``*`` for every agent). An agent sees the rows that match any
filter of a role it holds (the filters are ORed, as PostgreSQL's permissive row policies are). Fail closed:

- a dataset with row filters, read by an agent that holds none of their roles, is refused (403);
- a filter whose claim the token lacks (or holds as null, an object, or a list where one value is wanted)
  is refused (403): a missing claim never widens a read;
- ``true`` is the only way to grant every row.

A filter is a conjunction of terms ``column op value`` with the query API's operators; a value is a literal
(``'text'``, a number, ``true``/``false``, a parenthesised list for ``in``) or ``{claims.NAME}`` (dotted for
nested claims). Values are bound by the connector, never spliced into SQL; columns are checked against the
reflected table when the policy loads. The filter that applied, claim values filled in, goes into the
audit record's ``row_filter``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from connectors.base import LIST_OPERATORS, MAX_LIST_VALUES, NULL_OPERATORS, Filter
from gateway.common.errors import NOT_ALLOWED, Forbidden

EVERY_AGENT = "*"
MAX_TERMS = 20

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<claim>\{\s*claims(?:\.[A-Za-z_][A-Za-z0-9_\-]*)+\s*\})
    | (?P<string>'(?:[^']|'')*')
    | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<op><=|>=|!=|<>|=|<|>)
    | (?P<punct>[(),])
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    )""", re.VERBOSE)


@dataclass(frozen=True, slots=True)
class Claim:
    """A value taken from the verified token: ``{claims.a.b}`` -> ("a", "b")."""

    path: tuple[str, ...]

    def __str__(self) -> str:
        return "{claims." + ".".join(self.path) + "}"


@dataclass(frozen=True, slots=True)
class Term:
    column: str
    op: str  # one of connectors.base.OPERATORS
    value: Any = None  # a literal, a Claim, or (for in / not in) a tuple of them or one Claim holding a list


@dataclass(frozen=True, slots=True)
class RowFilter:
    key: str  # the role, agent or "*" it applies to
    text: str  # as the admin wrote it
    terms: tuple[Term, ...]  # empty: every row ("true")

    @property
    def columns(self) -> set[str]:
        return {t.column for t in self.terms}


@dataclass(frozen=True, slots=True)
class Scope:
    """The rows one agent may see of one dataset: any of `alternatives`, each an AND of filters."""

    alternatives: tuple[tuple[Filter, ...], ...]
    text: str  # for the audit record, claim values filled in

    @property
    def unrestricted(self) -> bool:
        return any(not terms for terms in self.alternatives)


class FilterSyntaxError(ValueError):
    pass


def parse(text: str, key: str = "") -> RowFilter:
    """A row filter's text -> its terms; FilterSyntaxError says what is wrong (the catalog adds where)."""
    tokens = _tokens(text)
    if len(tokens) == 1 and tokens[0][0] == "word" and tokens[0][1].lower() == "true":
        return RowFilter(key, text, ())
    cursor = _Cursor(tokens)
    terms: list[Term] = []
    while True:
        terms.append(_term(cursor))
        if cursor.done:
            break
        if not cursor.word("and"):
            raise FilterSyntaxError(f"expected 'and' between terms, found {cursor.next_text!r} "
                                    "(terms are ANDed; write one filter per role for alternatives)")
    if len(terms) > MAX_TERMS:
        raise FilterSyntaxError(f"a filter has at most {MAX_TERMS} terms")
    return RowFilter(key, text, tuple(terms))


class _Cursor:
    """The tokens of one filter, read front to back."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.tokens, self.pos = tokens, 0

    @property
    def done(self) -> bool:
        return self.pos == len(self.tokens)

    @property
    def next_text(self) -> str:
        return self.tokens[self.pos][1]

    def take(self) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise FilterSyntaxError("the filter ends too early")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def word(self, expected: str) -> bool:
        """Takes the next token when it is the keyword `expected`."""
        if self.done:
            return False
        kind, text = self.tokens[self.pos]
        if kind == "word" and text.lower() == expected:
            self.pos += 1
            return True
        return False


def _term(cursor: _Cursor) -> Term:
    """One `column op value` (or `column is [not] null`)."""
    kind, column = cursor.take()
    if kind != "word" or column.lower() in ("and", "in", "not", "is", "null", "like", "true", "false"):
        raise FilterSyntaxError(f"expected a column name, found {column!r}")
    if cursor.word("is"):
        op = "is not null" if cursor.word("not") else "is null"
        if not cursor.word("null"):
            raise FilterSyntaxError(f"expected 'null' after 'is' ({column})")
        return Term(column, op)
    op = _operator(cursor, column)
    if op in LIST_OPERATORS:
        return Term(column, op, _list(cursor.take))
    value = _value(cursor.take())
    if op == "like" and not isinstance(value, (str, Claim)):
        raise FilterSyntaxError(f"'like' on {column!r} takes a text pattern")
    return Term(column, op, value)


def _operator(cursor: _Cursor, column: str) -> str:
    if cursor.word("not"):
        if not cursor.word("in"):
            raise FilterSyntaxError(f"expected 'in' after 'not' ({column})")
        return "not in"
    if cursor.word("in"):
        return "in"
    if cursor.word("like"):
        return "like"
    kind, op = cursor.take()
    if kind != "op":
        raise FilterSyntaxError(f"expected an operator after {column!r}, found {op!r}")
    return "!=" if op == "<>" else op


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise FilterSyntaxError(f"cannot read the filter at {text[pos:pos + 20]!r}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    if not out:
        raise FilterSyntaxError("the filter is empty (write \"true\" for every row)")
    return out


def _value(token: tuple[str, str]) -> Any:
    kind, raw = token
    if kind == "claim":
        return Claim(tuple(raw.strip("{} ").split(".")[1:]))
    if kind == "string":
        return raw[1:-1].replace("''", "'")
    if kind == "number":
        return float(raw) if any(c in raw for c in ".eE") else int(raw)
    if kind == "word" and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise FilterSyntaxError(f"expected a value ('text', a number, true, false or {{claims.NAME}}), found {raw!r}")


def _list(take: Callable[[], tuple[str, str]]) -> Any:
    first = take()
    if first[0] == "claim":
        return _value(first)  # a claim holding a list
    if first != ("punct", "("):
        raise FilterSyntaxError("'in' takes a list such as ('EU', 'UK') or a {claims.NAME} holding one")
    values: list[Any] = []
    while True:
        values.append(_value(take()))
        sep = take()
        if sep == ("punct", ")"):
            break
        if sep != ("punct", ","):
            raise FilterSyntaxError(f"expected ',' or ')' in a list, found {sep[1]!r}")
    if len(values) > MAX_LIST_VALUES:
        raise FilterSyntaxError(f"a list holds at most {MAX_LIST_VALUES} values")
    return tuple(values)


def applies(filters: Mapping[str, RowFilter], agent: str, roles: Iterable[str]) -> bool:
    """Whether the agent may see any rows at all: the dataset has no row filters, or one is keyed by the
    agent, a role it holds, or "*"."""
    return not filters or agent in filters or EVERY_AGENT in filters or any(r in filters for r in roles)


def scope_for(dataset: str, filters: Mapping[str, RowFilter], agent: str, claims: Mapping[str, Any],
              roles: Iterable[str]) -> Scope | None:
    """The rows `agent` may see of `dataset`: None when the dataset has no row filters; else a Scope, or
    Forbidden when no filter applies to the agent or one lacks its claim."""
    if not filters:
        return None
    holders = {agent, EVERY_AGENT, *roles}
    applying = [f for key, f in sorted(filters.items()) if key in holders]
    if not applying:
        raise Forbidden(NOT_ALLOWED, reason=f"no row filter of {dataset!r} for the agent's roles")
    alternatives = tuple(tuple(_resolve(dataset, t, claims) for t in f.terms) for f in applying)
    if any(not terms for terms in alternatives):  # a "true" filter: every row
        return Scope(((),), " OR ".join(f"[{f.key}] true" for f in applying if not f.terms))
    text = " OR ".join(f"[{f.key}] " + " AND ".join(_render(t) for t in terms)
                       for f, terms in zip(applying, alternatives, strict=True))
    return Scope(alternatives, text)


def _resolve(dataset: str, term: Term, claims: Mapping[str, Any]) -> Filter:
    if term.op in NULL_OPERATORS:
        return Filter(term.column, term.op)
    if term.op in LIST_OPERATORS:
        if isinstance(term.value, Claim):
            got = _claim(dataset, term.value, claims, many=True)
            values = got if isinstance(got, list) else [got]
        else:
            values = [_claim(dataset, v, claims) if isinstance(v, Claim) else v for v in term.value]
        if not values:
            # "x in ()" matches nothing and "x not in ()" everything; neither is valid SQL.
            raise Forbidden(f"the row filter of {dataset!r} needs a non-empty list of values from the token",
                            reason=f"row filter of {dataset!r}: empty list for {term.column!r}")
        return Filter(term.column, term.op, values)
    value = _claim(dataset, term.value, claims) if isinstance(term.value, Claim) else term.value
    return Filter(term.column, term.op, value)


def _claim(dataset: str, ref: Claim, claims: Mapping[str, Any], *, many: bool = False) -> Any:
    value: Any = claims
    for part in ref.path:
        value = value.get(part) if isinstance(value, Mapping) else None
    scalar = isinstance(value, (str, int, float, bool))
    fits = scalar or (many and isinstance(value, list) and len(value) <= MAX_LIST_VALUES
                      and all(isinstance(v, (str, int, float, bool)) for v in value))
    if not fits:
        claim = ".".join(ref.path)
        raise Forbidden(f"the row filter of {dataset!r} needs the token claim {claim!r} "
                        f"({'a value or a list of values' if many else 'one value'}), which this token lacks",
                        reason=f"row filter of {dataset!r}: token lacks claim {claim!r}")
    return value


def _render(f: Filter) -> str:
    if f.op in NULL_OPERATORS:
        return f"{f.column} {f.op}"
    return f"{f.column} {f.op} {json.dumps(f.value, ensure_ascii=False)}"
