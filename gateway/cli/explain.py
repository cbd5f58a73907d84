"""`agentgate explain AGENT DATASET [--claim KEY=VALUE ...] [--json]`: why an agent may, or may not, read a
dataset, from the config's policy files alone (no store, no source). The answer is gateway/policy/explain.py's,
computed by the code a read runs; this module prints it.

Exit 0 with an answer, allow or deny alike (it informs, as `check --replay` does); 1 for a dataset the catalog
does not have (close names suggested) or a policy directory that does not load; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from gateway.cli import arguments
from gateway.cli.arguments import Parser, Subcommands
from gateway.cli.exits import EXIT_FAULT, EXIT_OK
from gateway.common.textsafe import terminal
from gateway.config import Settings

if TYPE_CHECKING:
    from gateway.policy import Explanation
    from gateway.policy.explain import Line


def add_parser(sub: Subcommands, common: Parser) -> None:
    e = sub.add_parser("explain", parents=[common],
                       help="why an agent may or may not read a dataset, from the policy files (offline)")
    e.add_argument("agent", metavar="AGENT", type=arguments.text, help="the agent, as a token's sub names it")
    e.add_argument("dataset", metavar="DATASET", type=arguments.text, help="the dataset, as datasets.toml names it")
    e.add_argument("--claim", type=arguments.claim(frozenset({"sub"})), action=arguments.Claims,
                   metavar="KEY=VALUE", help="a claim the agent's token would carry, to fill its row filters in; "
                                             "repeatable; VALUE read as in token issue --claim")
    e.add_argument("--json", action="store_true", help="the answer as one JSON object")


def run(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.policy import UnknownDataset, explain_read, load_policy

    policy = load_policy(settings.policy.dir, settings.sources)  # a fault: ConfigError, one line, exit 1
    try:
        answer = asyncio.run(explain_read(policy, args.agent, args.dataset, args.claim))
    except UnknownDataset as exc:
        close = ", ".join(exc.suggestions) or "none: the catalog is empty"
        print(terminal(f"agentgate: no dataset {exc.name!r} in {settings.policy.dir / 'datasets.toml'} "
                       f"(datasets: {close})"), file=sys.stderr)
        return EXIT_FAULT
    if args.json:
        print(json.dumps(as_json(answer, settings, args.claim or {}), indent=2))
    else:
        for line in as_text(answer, settings, args.claim or {}):
            print(terminal(line))
    return EXIT_OK


def as_json(a: Explanation, settings: Settings, claims: dict[str, Any]) -> dict[str, Any]:
    ds = a.dataset
    rows = None if a.rows is None else {
        "filters": [{"key": f.key, "filter": f.text, "applies": f.applies, "via": list(f.chain),
                     "claims": list(f.claims)} for f in a.rows.filters],
        "claims": claims, "applied": a.rows.scope, "refused": a.rows.refused}
    return {
        "agent": a.agent, "dataset": ds.name, "decision": "allow" if a.allowed else "deny", "reason": a.reason,
        "rule": a.line.to_dict() if a.line else None, "agent_is_role": a.role, "roles": list(a.roles),
        "owner": ds.owner, "description": ds.description, "source": ds.source,
        "kind": "sql" if ds.table is not None else "http", "table": ds.table, "path": ds.path,
        "max_rows": ds.max_rows, "approval": ds.approval,
        "columns": [{"name": c.name, "class": c.cls, "readable": c.readable,
                     "rule": c.line.to_dict() if c.line else None} for c in a.columns],
        "masked": a.masked, "row_filters": rows,
        "budget": {"requests_per_minute": a.limits.requests_per_minute, "rows_per_day": a.limits.rows_per_day,
                   "from": a.budget_from},
        "sql_mode": {"enabled": settings.sql.enabled, "readable": settings.sql.enabled and a.sql_mode},
        "proxy": _proxy(a), "notes": list(a.notes)}


def _proxy(a: Explanation) -> dict[str, str] | None:
    """An HTTP dataset: the one method and the paths a read goes through (core/reads.proxy)."""
    ds = a.dataset
    if ds.path is None:
        return None
    return {"method": "GET", "path": f"/v1/datasets/{ds.name}/proxy/{{path}}",
            "source_path": f"{ds.path}/{{path}}"}


def _where(line: Line | None) -> str:
    if line is None:
        return "no policy line grants it"
    at = f"{line.path} line {line.number}" if line.number else str(line.path)
    via = f", via {' -> '.join(line.chain)}" if len(line.chain) > 1 else ""
    return f"{line.text} ({at}{via})"


def as_text(a: Explanation, settings: Settings, claims: dict[str, Any]) -> list[str]:
    ds = a.dataset
    out = [f"{a.agent} reading {ds.name}: {'allow' if a.allowed else 'deny'}",
           f"  why:       {a.reason}", f"  rule:      {_where(a.line)}",
           f"  roles:     {', '.join(a.roles) or 'none'}"]
    out += [f"  note:      {n}" for n in a.notes]
    where = f"SQL table {ds.table}" if ds.table is not None else f"HTTP path {ds.path}"
    out.append(f"dataset:     {ds.name}, owner {ds.owner}; {where} on source {ds.source}, max_rows {ds.max_rows}")
    out.append("columns:     " + ("every column readable (no classed columns)" if not a.columns else
                                  f"masked: {', '.join(a.masked) or 'none'}"))
    out += [f"  {c.name} ({c.cls}): {'readable' if c.readable else 'masked'}, {_where(c.line)}" for c in a.columns]
    out += _rows_text(a, claims)
    lim = a.limits
    out.append(f"budget:      {a.budget_from}" if lim.empty else
               f"budget:      requests_per_minute {_limit(lim.requests_per_minute)}, rows_per_day "
               f"{_limit(lim.rows_per_day)} ({a.budget_from})")
    out.append("approval:    " + ("each query waits for a person's approval (202 until approved; describe and "
                                  f"list do not), asked of the owner {ds.owner}" if ds.approval == "required"
                                  else "not required"))
    out.append("SQL mode:    " + _sql_text(a, settings))
    proxy = _proxy(a)
    if proxy is not None:
        out.append(f"HTTP:        {proxy['method']} {proxy['path']} -> {proxy['method']} {proxy['source_path']} "
                   "on the source (GET only; the source's answer passed through)")
    return out


def _limit(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def _rows_text(a: Explanation, claims: dict[str, Any]) -> list[str]:
    if a.rows is None:
        return ["rows:        every row (no row filters)"]
    out = ["rows:        row filters (the agent sees the rows of any filter that applies to it):"]
    for f in a.rows.filters:
        held = f"applies, via {' -> '.join(f.chain)}" if f.applies else "does not apply"
        needs = f"; needs claim {', '.join(f.claims)}" if f.claims else ""
        out.append(f"  [{f.key}] {f.text}: {held}{needs}")
    given = ("with the claims " + ", ".join(f"{k}={json.dumps(v)}" for k, v in claims.items()) if claims
             else "with no claims (give them with --claim KEY=VALUE)")
    out.append(f"  {given}: " + (f"refused: {a.rows.refused}" if a.rows.refused is not None
                                 else f"sees {a.rows.scope}"))
    return out


def _sql_text(a: Explanation, settings: Settings) -> str:
    if not settings.sql.enabled:
        return "off ([sql] enabled = false)"
    if a.sql_mode:
        masked = f", {', '.join(a.masked)} masked" if a.masked else ""
        return f"readable in POST /v1/sql as the table {a.dataset.name}{masked}, the same rows as a query"
    if a.allowed and a.dataset.table is None:
        return "not in SQL mode: an HTTP dataset"
    if a.allowed:
        return "refused: a dataset that needs approval is not read in SQL mode"
    return "refused, as every read"
