"""`agentgate explain` says what a running gateway does: for every (agent, dataset) pair of the shipped policies/
(every name the policy knows, roles included, and a stranger), explain's decision, masked columns and row filter
are what the in-process gateway answers a real signed token, with no claims and with every claim a filter needs.
The same on the row filters' test workspace (tests/test_row_filters.py), whose agents meet every refusal a row
filter makes: none applies, a claim is missing, roles held through roles."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway import cli
from gateway.config import load_settings
from gateway.policy import Claim, Policy, load_policy
from tests.conftest import client_for, token, write_workspace
from tests.test_row_filters import FILTER_POLICY, FILTERED

pytestmark = pytest.mark.integration

REPO = Path(__file__).parent.parent
STRANGER = "nobody-bot"  # named by no policy line


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, TestClient]]:
    """A copy of the embedded default (agentgate.toml, policies/, demo/), served in-process. Without its
    budgets.toml: budgets count requests and never decide access (explain says them; tests/test_explain.py checks
    that), and this test sends many."""
    root = tmp_path_factory.mktemp("shipped")
    shutil.copy(REPO / "agentgate.toml", root / "agentgate.toml")
    shutil.copytree(REPO / "policies", root / "policies")
    shutil.copytree(REPO / "demo", root / "demo")
    (root / "policies" / "budgets.toml").unlink(missing_ok=True)
    with client_for(root / "agentgate.toml") as client:
        yield root / "agentgate.toml", client


@pytest.fixture(scope="module")
def filtered(tmp_path_factory: pytest.TempPathFactory, sqlite_source: str) -> Iterator[tuple[Path, TestClient]]:
    config = write_workspace(tmp_path_factory.mktemp("filtered"), source_url=sqlite_source, datasets=FILTERED,
                             policy=FILTER_POLICY)
    with client_for(config) as client:
        yield config, client


def names(policy: Policy) -> list[str]:
    known = {m for m, _ in policy.groupings} | {r for _, r in policy.groupings} | {r.sub for r in policy.rules}
    return sorted(known | {STRANGER})


def needed_claims(policy: Policy) -> dict[str, Any]:
    """A value for every claim some row filter of the catalog needs."""
    out: dict[str, Any] = {}
    for ds in policy.catalog:
        for f in ds.row_filters.values():
            for term in f.terms:
                for v in term.value if isinstance(term.value, tuple) else (term.value,):
                    if isinstance(v, Claim):
                        out[".".join(v.path)] = "EU"
    return out


def explained(config: Path, capsys: pytest.CaptureFixture[str], agent: str, dataset: str,
              claims: dict[str, Any]) -> dict[str, Any]:
    given = [a for k, v in claims.items() for a in ("--claim", f"{k}={json.dumps(v)}")]
    assert cli.main(["explain", agent, dataset, *given, "--json", "--config", str(config)]) == 0
    answer: dict[str, Any] = json.loads(capsys.readouterr().out)
    return answer


def expected_query(answer: dict[str, Any], refused: int) -> int:
    """What a query answers, by explain: the read's refusal, else a person's approval first, else the row filter
    refusing the token's claims, else rows."""
    if answer["decision"] == "deny":
        return refused
    if answer["approval"] == "required":
        return 202
    rows = answer["row_filters"]
    return 403 if rows is not None and rows["refused"] is not None else 200


def check_pair(client: TestClient, answer: dict[str, Any], headers: dict[str, str], listed: set[str] | None,
               auditor: dict[str, str] | None) -> None:
    agent, name, allowed = answer["agent"], answer["dataset"], answer["decision"] == "allow"
    refused = 401 if answer["agent_is_role"] else 403
    described = client.get(f"/v1/datasets/{name}", headers=headers)
    assert described.status_code == (200 if allowed else refused), (agent, name, answer["reason"], described.text)
    if listed is not None:
        assert (name in listed) == allowed, (agent, name)
    if answer["kind"] != "sql":
        return
    got = client.post(f"/v1/datasets/{name}/query", json={"limit": 1}, headers=headers)
    assert got.status_code == expected_query(answer, refused), (agent, name, answer, got.text)
    if got.status_code != 200:
        return
    assert sorted(got.json()["masked"]) == sorted(answer["masked"]), (agent, name)
    if auditor is not None and answer["row_filters"] is not None:
        record = client.get(f"/admin/v1/audit?agent={agent}&limit=1", headers=auditor).json()["records"][0]
        assert record["row_filter"] == answer["row_filters"]["applied"], (agent, name)


@pytest.mark.parametrize("with_claims", [False, True], ids=["no-claims", "every-claim"])
def test_explain_answers_as_the_running_gateway(shipped: tuple[Path, TestClient], capsys: pytest.CaptureFixture[str],
                                                with_claims: bool) -> None:
    config, client = shipped
    settings = load_settings(config)
    answers = agree(config, client, capsys, needed_claims(load_policy(settings.policy.dir, settings.sources))
                    if with_claims else {})
    # The shipped policies exercise both answers, masking, and (with claims) a row filter that applies.
    assert {a["decision"] for a in answers} == {"allow", "deny"}
    assert any(a["masked"] and a["decision"] == "allow" for a in answers)
    if with_claims:
        assert any(a["row_filters"] and a["row_filters"]["applied"] for a in answers)


# Typed as the row filters' columns take them: a claim of the wrong type is the source's 400, not explain's.
FILTER_CLAIMS = {"region": "DE", "regions": ["FR", "US"], "upto": 30}


@pytest.mark.parametrize("claims", [{}, {"region": "DE"}, FILTER_CLAIMS], ids=["none", "some", "all"])
def test_explain_answers_as_the_gateway_on_every_row_filter_refusal(
        filtered: tuple[Path, TestClient], capsys: pytest.CaptureFixture[str], claims: dict[str, Any]) -> None:
    config, client = filtered
    answers = agree(config, client, capsys, claims)
    reasons = " ".join(a["reason"] for a in answers)
    assert "no row filter of 'customers' applies" in reasons  # other-bot: allowed by the policy, no filter
    refusals = [a for a in answers if a["decision"] == "allow" and a["row_filters"] and a["row_filters"]["refused"]]
    assert bool(refusals) == (claims != FILTER_CLAIMS)


def agree(config: Path, client: TestClient, capsys: pytest.CaptureFixture[str],
          claims: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (name, dataset) pair explained and asked of the gateway, each answer checked; the answers."""
    settings = load_settings(config)
    policy = load_policy(settings.policy.dir, settings.sources)
    assert settings.auth.secret is not None
    secret, audience = settings.auth.secret.reveal(), settings.auth.audience
    admins = [n for n in names(policy) if n not in policy.roles
              and asyncio.run(policy.decide(n, "admin:audit", "read")).allowed]
    auditor = {"Authorization": f"Bearer {token(admins[0], secret=secret, aud=audience)}"} if admins else None
    answers = []
    for agent in names(policy):
        headers = {"Authorization": f"Bearer {token(agent, secret=secret, aud=audience, **claims)}"}
        listing = client.get("/v1/datasets", headers=headers)
        listed = {d["name"] for d in listing.json()["datasets"]} if listing.status_code == 200 else None
        assert (listed is None) == (agent in policy.roles), (agent, listing.text)
        for name in sorted(policy.catalog.datasets):
            answer = explained(config, capsys, agent, name, claims)
            check_pair(client, answer, headers, listed, auditor)
            answers.append(answer)
    return answers
