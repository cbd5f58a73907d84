"""SQL mode: which of an agent's conditions may also run inside a row-filtered dataset's fence.

The fence (gateway/sqlmode/rewrite.py _fenced) keeps every expression an agent writes off the rows its row filter
hides; it also keeps the planner from using an index for the agent's own condition, so `WHERE id = 5` on a
filtered table reads every visible row. A condition that cannot fail and does nothing but be true or false — a
column of that dataset compared with a literal — tells nothing when it is evaluated on a hidden row: the filter
beside it still drops the row, and no error can come of it (a literal that does not fit the column's type fails
when the statement is planned, whatever the rows). So a copy of each such condition is placed inside the fence,
beside the filter, where an index can serve it; the agent's condition stays where it was written. PostgreSQL's
security-barrier views push "leakproof" conditions down for the same reason.

Only what is plainly safe is copied: `column <op> literal` (`=`, `<>`, `<`, `<=`, `>`, `>=`), `column IN
(literals)` and `column BETWEEN literal AND literal`, ANDed at the top of the WHERE of the SELECT that reads the
dataset directly, the column that dataset's (qualified by its name or alias, or unqualified where it is the
SELECT's only table), never a masked one, and only where no outer join makes the dataset's side nullable.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlglot import exp

_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)


def copies(ref: exp.Table, columns: Collection[str], hidden: Collection[str]) -> list[exp.Expr]:
    """Copies of the conditions that may run inside the fence of the dataset `ref` reads, their column
    written unqualified (inside the fence the real table is the only one)."""
    select = ref.parent.parent if isinstance(ref.parent, (exp.From, exp.Join)) else None
    if not isinstance(select, exp.Select):
        return []
    joins = select.args.get("joins") or []
    if any(j.side or (j.kind or "").upper() not in ("", "INNER", "CROSS") for j in joins):
        return []  # an outer join: a condition moved into its nullable side would change the answer
    where = select.args.get("where")
    if not isinstance(where, exp.Where):
        return []
    name = ref.alias_or_name
    known = {c.lower(): c for c in columns if c not in hidden}
    out: list[exp.Expr] = []
    for condition in _conjuncts(where.this):
        column = _column_of(condition)
        if column is None or (column.table and column.table != name) or (not column.table and joins):
            continue
        real = known.get(column.name.lower())
        if real is None:
            continue
        copied = condition.copy()
        for c in copied.find_all(exp.Column):
            c.replace(exp.column(real, quoted=True))
        out.append(copied)
    return out


def _conjuncts(condition: exp.Expr) -> list[exp.Expr]:
    while isinstance(condition, exp.Paren):
        condition = condition.this
    if isinstance(condition, exp.And):
        return _conjuncts(condition.left) + _conjuncts(condition.right)
    return [condition]


def _column_of(condition: exp.Expr) -> exp.Column | None:
    """The one column of a plainly safe condition (see the module's doc), or None."""
    if isinstance(condition, _COMPARISONS):
        left, right = _bare(condition.left), _bare(condition.right)
        if isinstance(left, exp.Column) and _literal(right):
            return _plain(left)
        if isinstance(right, exp.Column) and _literal(left):
            return _plain(right)
        return None
    if isinstance(condition, exp.In):
        values = condition.expressions
        if condition.args.get("query") or condition.args.get("unnest") or condition.args.get("field") or not values:
            return None
        target = _bare(condition.this)
        if isinstance(target, exp.Column) and all(_literal(_bare(v)) for v in values):
            return _plain(target)
        return None
    if isinstance(condition, exp.Between):
        target = _bare(condition.this)
        bounds = (_bare(condition.args.get("low")), _bare(condition.args.get("high")))
        if isinstance(target, exp.Column) and all(_literal(b) for b in bounds):
            return _plain(target)
    return None


def _bare(node: exp.Expr | None) -> exp.Expr | None:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _literal(node: exp.Expr | None) -> bool:
    if isinstance(node, (exp.Literal, exp.Boolean)):
        return True
    return isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and node.this.is_number


def _plain(column: exp.Column) -> exp.Column | None:
    return None if isinstance(column.this, exp.Star) else column
