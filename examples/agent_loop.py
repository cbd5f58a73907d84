"""A small agent loop over agentgate, written with its Python client: what an agent built on the gateway meets.

Against the Quickstart's demo (`agentgate serve`, a token from `agentgate token issue --agent analyst-bot`) it:

1. lists the datasets it may read;
2. reads rows under a work unit, with a column it may not see (masked: null, and named in `masked`);
3. tries to filter on that column: refused, as filtering would let its values be guessed;
4. asks for a dataset it was never granted: refused, and it keeps the refusal's request id (the audit record);
5. reads a dataset that needs a person's approval: prints the command that approves it, then waits (bounded).

A refusal is an answer the agent notes and works around, not a crash: every step goes on after one. Exit 0 when
every step went as the gateway's policy says; 1 on an unexpected refusal or no gateway; 3 when the approval was
denied or not given in time. See examples/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.client import (
    AgentgateError,
    ApprovalPending,
    ApprovalRefused,
    ApprovalTimeout,
    Client,
    Dataset,
    Forbidden,
    Unreachable,
)

# The demo's customers: `email` is classed pii, which analyst-bot may not see.
CUSTOMERS = "customers"
LOOKUP: dict[str, Any] = {"columns": ["id", "name", "email", "country"], "where": [["country", "=", "DE"]],
                          "order_by": ["-id"], "limit": 3}
# No demo agent is granted a dataset of this name: the gateway refuses it exactly as it refuses a dataset that
# exists but is not this agent's to read, so that an agent cannot probe which names exist.
NOT_GRANTED = "payroll"

DONE, REFUSED, NOT_APPROVED = 0, 1, 3


@dataclass
class Memory:
    """What the agent has learned so far: each step decides from what the steps before it saw."""

    wait: float  # seconds the approval step waits for a person, at most
    datasets: list[Dataset] = field(default_factory=list)
    masked: list[str] = field(default_factory=list)


def say(text: str = "") -> None:
    # Flushed: the approval step waits, and whoever reads this output (a person, a pipe) needs its id now.
    print(text, flush=True)


def refusal(error: AgentgateError) -> str:
    """A refusal as an agent should log it: the code, the gateway's message and the request id of its record."""
    return f"{type(error).__name__}: {error.code} ({error.status}): {error.message} [request {error.request_id}]"


def rows_of(rows: Sequence[Mapping[str, Any]]) -> None:
    for row in rows:
        say(f"     {json.dumps(row)}")


def list_datasets(gate: Client, memory: Memory) -> int:
    say("1. The datasets this agent may read:")
    memory.datasets = gate.datasets()
    for ds in memory.datasets:
        classed = [f"{c['name']} ({c['class']})" for c in ds["columns"] if c["class"]]
        say(f"   - {ds['name']}: {ds['description']} (owner {ds['owner']}, approval {ds.get('approval', 'none')}"
            f"{', classed: ' + ', '.join(classed) if classed else ''})")
    return DONE


def read_masked(gate: Client, memory: Memory) -> int:
    """Read under the client's work unit; the columns the agent may not see come back null, named in `masked`."""
    say(f"2. Read {CUSTOMERS} under work unit {gate.work_unit}:")
    page = gate.query(CUSTOMERS, **LOOKUP)
    say(f"   {len(page.rows)} rows [request {page.request_id}]")
    rows_of(page.rows)
    say(f"   masked: {', '.join(page.masked)} (null in every row: this agent may not see it)" if page.masked
        else "   masked: none (this agent sees every column it asked for)")
    memory.masked = page.masked
    return DONE


def filter_on_masked(gate: Client, memory: Memory) -> int:
    masked = memory.masked
    if not masked:
        say("3. No masked column to filter on: this agent sees every column it read.")
        return DONE
    say(f"3. Filter {CUSTOMERS} on the masked column {masked[0]!r}:")
    try:
        gate.query(CUSTOMERS, columns=["id"], where=[[masked[0], "like", "%@example.com"]], limit=1)
    except Forbidden as refused:
        say(f"   refused, as it should be: {refusal(refused)}")
        return DONE
    say("   answered: this agent may filter on it after all (not what the demo's policy says)")
    return REFUSED


def read_not_granted(gate: Client, memory: Memory) -> int:
    say(f"4. Read {NOT_GRANTED!r}, a dataset this agent was never granted:")
    try:
        gate.query(NOT_GRANTED, limit=1)
    except Forbidden as refused:
        say(f"   refused: {refusal(refused)}")
        say(f"   (`agentgate audit list --work-unit {gate.work_unit}` shows this request id's record)")
        return DONE
    say("   answered: this agent may read it after all")
    return REFUSED


def read_with_approval(gate: Client, memory: Memory) -> int:
    """Ask; the gateway opens a pending approval and answers with its id; a person decides; ask again with it."""
    needing = [ds["name"] for ds in memory.datasets if ds.get("approval") == "required"]
    if not needing:
        say("5. No dataset this agent may read needs a person's approval: nothing to wait for.")
        return DONE
    name, columns, wait = needing[0], ["id", "name", "email"], memory.wait
    say(f"5. Read {name}, which needs a person's approval:")
    try:
        page = gate.query(name, columns=columns, order_by=["id"], limit=3)
    except ApprovalPending as pending:
        say(f"   pending: approval {pending.approval_id} [request {pending.request_id}]")
        say("   A person approves it, from another shell in the gateway's directory:")
        say(f"     agentgate approve {pending.approval_id} --by you@example.com")
        say(f"   waiting for the decision (at most {wait:g} s)...")
        try:
            # The same arguments again: an approval covers one request body.
            page = gate.query(name, columns=columns, order_by=["id"], limit=3, approval_id=pending.approval_id,
                              wait_for_approval=wait, poll_interval=0.5)
        except ApprovalTimeout as late:
            say(f"   still pending after {wait:g} s; approval {late.approval_id} still serves once approved")
            return NOT_APPROVED
        except ApprovalRefused as refused:
            say(f"   not approved: {refusal(refused)}")
            return NOT_APPROVED
    say(f"   approved: {len(page.rows)} rows, masked: {', '.join(page.masked) or 'none'} [request {page.request_id}]")
    rows_of(page.rows)
    return DONE


Step = Callable[[Client, Memory], int]
PLAN: tuple[Step, ...] = (list_datasets, read_masked, filter_on_masked, read_not_granted, read_with_approval)


def run(gate: Client, memory: Memory) -> int:
    """The loop: each step runs, its outcome is noted, the next one goes on; the worst outcome is the exit status.
    A refusal no step expected is noted too (with its request id) and does not stop the plan."""
    worst = DONE
    for step in PLAN:
        try:
            outcome = step(gate, memory)
        except Unreachable:
            raise  # no gateway: no later step can do better
        except AgentgateError as error:
            say(f"   refused where the demo's policy allows: {refusal(error)}")
            outcome = REFUSED
        worst = max(worst, outcome)
    say(f"Done. This run's records: agentgate audit list --work-unit {gate.work_unit}")
    return worst


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--url", default=os.environ.get("AGENTGATE_URL", "http://127.0.0.1:8080"),
                        help="the gateway (default: $AGENTGATE_URL, else http://127.0.0.1:8080)")
    parser.add_argument("--token", default=os.environ.get("AGENTGATE_TOKEN"),
                        help="the agent's JWT (default: $AGENTGATE_TOKEN)")
    parser.add_argument("--work-unit", default="EXAMPLE-1", help="the X-Work-Unit of every read (default EXAMPLE-1)")
    parser.add_argument("--wait", type=float, default=300.0,
                        help="seconds to wait for the approval, at most a day (default 300)")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("no token: pass --token or set AGENTGATE_TOKEN (agentgate token issue --agent analyst-bot)")
    if not 0 < args.wait <= 24 * 3600:  # the client's own bound on a wait (gateway/client/bounds.py)
        parser.error("--wait: more than 0 and at most 86400 seconds")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    with Client(args.url, args.token, work_unit=args.work_unit) as gate:
        try:
            return run(gate, Memory(wait=args.wait))
        except Unreachable as gone:
            say(f"no gateway at {args.url} ({gone.message}): is `agentgate serve` running?")
            return REFUSED


if __name__ == "__main__":
    sys.exit(main())
