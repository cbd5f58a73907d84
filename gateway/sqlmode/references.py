"""SQL mode: the table references of a statement. Which name a dataset (a CTE in scope is not), and the
CTEs renamed so that none can shadow the real table a dataset's subquery reads."""

from __future__ import annotations

from sqlglot import exp

from gateway.common.errors import BadRequest


def _with_of(node: exp.Expr) -> exp.With | None:
    w = node.args.get("with_") or node.args.get("with")
    return w if isinstance(w, exp.With) else None


def _cte_of(table: exp.Table) -> exp.CTE | None:
    """The CTE `table` names, if one is in scope (a CTE sees the ones before it, and itself when RECURSIVE)."""
    if table.args.get("db") or table.args.get("catalog"):
        return None
    name = table.name
    prev: exp.Expr = table
    node = table.parent
    while node is not None:
        if isinstance(node, exp.With):
            ctes = list(node.expressions)
            index = next((i for i, c in enumerate(ctes) if c is prev), None)
            if index is not None:
                visible = ctes[:index] + ([ctes[index]] if node.args.get("recursive") else [])
                found = next((c for c in reversed(visible) if c.alias == name), None)
                if isinstance(found, exp.CTE):
                    return found
        else:
            w = _with_of(node)
            if w is not None and w is not prev:
                found = next((c for c in w.expressions if c.alias == name), None)
                if isinstance(found, exp.CTE):
                    return found
        prev, node = node, node.parent
    return None


def dataset_references(tree: exp.Expr) -> list[exp.Table]:
    """Every table reference that is not a CTE in scope: each must be a dataset."""
    out = []
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            raise BadRequest("only datasets may stand as tables")
        if _cte_of(table) is None:
            out.append(table)
    return out


def rename_ctes(tree: exp.Expr, nonce: str) -> None:
    """Give every CTE a fresh name no agent can write, each reference to it keeping the agent's name as its alias.
    A CTE can then never shadow the real table a dataset's subquery reads, whatever the agent calls it, so a CTE
    named like a dataset or a table is served exactly as one named like nothing (names do not leak)."""
    ctes = list(tree.find_all(exp.CTE))
    fresh = {id(c): f"agcte_{nonce}_{i}" for i, c in enumerate(ctes)}
    for table in [(t, _cte_of(t)) for t in tree.find_all(exp.Table)]:
        ref, cte = table
        if cte is None:
            continue
        if not isinstance(ref.args.get("alias"), exp.TableAlias):
            ref.set("alias", exp.TableAlias(this=exp.to_identifier(ref.name)))
        ref.set("this", exp.to_identifier(fresh[id(cte)]))
    for cte in ctes:
        alias = cte.args.get("alias")
        if isinstance(alias, exp.TableAlias):
            alias.set("this", exp.to_identifier(fresh[id(cte)]))


def reference_name(table: exp.Table) -> str | None:
    """The dataset a reference names, or None for a schema-qualified (raw or system) name."""
    if table.args.get("db") or table.args.get("catalog"):
        return None
    return table.name
