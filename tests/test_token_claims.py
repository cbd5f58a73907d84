"""`agentgate token issue --claim KEY=VALUE`: claims for row filters. VALUE is JSON when it is JSON, else text;
the claims that decide identity and validity are refused (exit 2, one line), as is a token the gateway would not
take; and a real `agentgate serve` applies the row filter that needs the claim."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from gateway import cli
from gateway.auth.tokens import MAX_TOKEN_CHARS
from gateway.cli.tokens import RESERVED_CLAIMS
from tests.conftest import AUDIENCE, SECRET, customer_rows, write_workspace
from tests.serving import serving
from tests.test_cli import agentgate_many, one_line_reason, output
from tests.test_row_filters import FILTER_POLICY, FILTERED

UNUSED_SOURCE = "sqlite+aiosqlite:///never-opened.db"


def mint(config: Path, capsys: pytest.CaptureFixture[str], *claims: str) -> dict[str, Any]:
    args = ["token", "issue", "--agent", "support-bot", "--config", str(config)]
    for c in claims:
        args += ["--claim", c]
    assert cli.main(args) == 0
    decoded: dict[str, Any] = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"],
                                         audience=AUDIENCE)
    return decoded


@pytest.mark.unit
def test_values_are_json_when_json_else_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_workspace(tmp_path, source_url=UNUSED_SOURCE)
    got = mint(config, capsys, "region=EU", 'regions=["eu","us"]', "upto=42", "ratio=0.5", "active=true",
               'org={"region": "DE"}', 'quoted="42"', "words=two words", "empty=", "nan=NaN", "nothing=null",
               "eq=a=b")
    assert got["region"] == "EU" and got["regions"] == ["eu", "us"]
    assert got["upto"] == 42 and got["ratio"] == 0.5 and got["active"] is True
    assert got["org"] == {"region": "DE"} and got["quoted"] == "42" and got["words"] == "two words"
    assert got["empty"] == "" and got["nan"] == "NaN" and got["nothing"] is None and got["eq"] == "a=b"
    assert got["sub"] == "support-bot" and "on_behalf_of" not in got


@pytest.mark.unit
@pytest.mark.parametrize("claim", [*(f"{k}=x" for k in sorted(RESERVED_CLAIMS)), "=x", "a b=1", "1st=2",
                                   "no-equals", "k=" + "[" * 5000, "k=\ud800", "dup=1"])
def test_refused_claims_are_exit_2_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               claim: str) -> None:
    config = write_workspace(tmp_path, source_url=UNUSED_SOURCE)
    extra = ["--claim", "dup=0"] if claim == "dup=1" else []  # the same key twice
    with pytest.raises(SystemExit) as stopped:
        cli.main(["token", "issue", "--agent", "a", *extra, "--claim", claim, "--config", str(config)])
    assert stopped.value.code == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 1 and out.err.startswith("agentgate: argument --claim"), out.err


@pytest.mark.unit
def test_a_token_too_large_for_the_gateway_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_workspace(tmp_path, source_url=UNUSED_SOURCE)
    code = cli.main(["token", "issue", "--agent", "a", "--claim", "big=" + "x" * MAX_TOKEN_CHARS,
                     "--config", str(config)])
    out = capsys.readouterr()
    assert code == 2 and out.out == ""
    assert out.err.count("\n") == 1 and str(MAX_TOKEN_CHARS) in out.err
    fits = mint(config, capsys, "big=" + "x" * (MAX_TOKEN_CHARS // 2))  # large, but the gateway takes it
    assert len(fits["big"]) == MAX_TOKEN_CHARS // 2


@pytest.mark.system
def test_a_running_gateway_applies_the_row_filter_the_claim_fills(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source, datasets=FILTERED, policy=FILTER_POLICY)
    issue = ("token", "issue", "--config", str(config), "--agent")
    one, many, lacking, refused = agentgate_many([
        (*issue, "support-bot", "--claim", "region=DE"),
        (*issue, "analyst-bot", "--claim", 'regions=["FR","US"]'),
        (*issue, "support-bot"),
        (*issue, "support-bot", "--claim", "sub=analyst-bot"),
    ])
    for proc in (one, many, lacking):
        assert proc.returncode == 0, output(proc)
    assert refused.returncode == 2 and "sub" in one_line_reason(refused) and refused.stdout == ""
    body = {"columns": ["id", "country"], "order_by": ["id"]}
    rows = customer_rows()
    with serving(config, tmp_path / "serve.log") as base:
        def read(token: str) -> httpx.Response:
            return httpx.post(f"{base}/v1/datasets/customers/query", json=body, timeout=10,
                              headers={"Authorization": f"Bearer {token.strip()}"})

        de, fr_us, none = read(one.stdout), read(many.stdout), read(lacking.stdout)
    assert de.status_code == 200, de.text
    assert [r["id"] for r in de.json()["rows"]] == [r["id"] for r in rows if r["country"] == "DE"]
    assert fr_us.status_code == 200, fr_us.text
    # The analyst's filter: its regions, active customers with an e-mail address.
    assert [r["id"] for r in fr_us.json()["rows"]] == [
        r["id"] for r in rows if r["country"] in ("FR", "US") and r["active"] and r["email"]][:25]
    assert none.status_code == 403 and "region" in none.json()["error"]["message"]
