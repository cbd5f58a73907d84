"""`agentgate explain AGENT DATASET`: every kind of answer, each on a workspace of its own, from the policy files
alone (the config's store and sources are never opened). Run in-process, as the console script runs `main`."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from tests.conftest import DATASETS, POLICY, write_workspace

pytestmark = pytest.mark.unit

# Nothing listens here: a command that opened the store or a source would fail, not answer.
NO_STORE = "postgresql://nobody@127.0.0.1:1/none"
HTTP_SOURCE = '\n[sources.tickets]\nurl = "http://127.0.0.1:1/api"\n'


def workspace(root: Path, *, policy: str = POLICY, datasets: str = DATASETS, budgets: str | None = None,
              extra: str = "") -> Path:
    config = write_workspace(root, source_url=f"sqlite+aiosqlite:///{root}/never-opened.db", store_url=NO_STORE,
                             policy=policy, datasets=datasets, extra=extra)
    if budgets is not None:
        (root / "policies" / "budgets.toml").write_text(budgets)
    return config


def explain(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code = cli.main(["explain", *args, "--json", "--config", str(config)])
    out = capsys.readouterr()
    assert code == 0, out.err
    answer: dict[str, Any] = json.loads(out.out)
    return answer


def line_of(config: Path, text: str) -> int:
    """Where a line is in the workspace's policy.csv, counted by the test itself."""
    lines = (config.parent / "policies" / "policy.csv").read_text().splitlines()
    return lines.index(text) + 1


def test_allow_names_the_rule_its_line_and_the_role_that_led_there(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = workspace(tmp_path)
    got = explain(config, capsys, "support-bot", "customers")
    assert got["decision"] == "allow"
    assert got["rule"] == {"rule": "p, support, customers, read, allow",
                           "file": str(config.parent / "policies" / "policy.csv"),
                           "line": line_of(config, "p, support, customers, read, allow"),
                           "via": ["support-bot", "support"]}
    assert (got["owner"], got["kind"], got["table"], got["approval"]) == (
        "maria.keller@example.com", "sql", "customers", "none")
    assert got["row_filters"] is None and got["proxy"] is None
    assert got["sql_mode"] == {"enabled": True, "readable": True}


def test_deny_by_an_explicit_deny_line_through_a_chain_of_roles(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = workspace(tmp_path, policy=POLICY + "p, contractors, orders, read, deny\n"
                                                 "g, temp-bot, leads\ng, leads, analyst\ng, leads, contractors\n")
    got = explain(config, capsys, "temp-bot", "orders")
    assert got["decision"] == "deny"
    assert got["reason"].startswith("denied by p, contractors, orders, read, deny")
    assert got["rule"]["line"] == line_of(config, "p, contractors, orders, read, deny")
    assert got["rule"]["via"] == ["temp-bot", "leads", "contractors"]
    assert got["sql_mode"]["readable"] is False
    allowed = explain(config, capsys, "analyst-bot", "orders")  # the same grant, without the deny
    assert allowed["decision"] == "allow" and allowed["rule"]["via"] == ["analyst-bot", "analyst"]


def test_deny_when_no_line_grants_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = workspace(tmp_path)
    got = explain(config, capsys, "support-bot", "orders")
    assert (got["decision"], got["rule"]) == ("deny", None)
    assert "no policy line grants this" in got["reason"]
    assert got["notes"] == []
    stranger = explain(config, capsys, "nobody-bot", "orders")
    assert stranger["decision"] == "deny"
    assert any("no g line gives 'nobody-bot' a role" in n for n in stranger["notes"])


def test_a_role_name_is_refused_as_the_gateway_refuses_its_tokens(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = workspace(tmp_path)
    got = explain(config, capsys, "support", "customers")
    assert got["decision"] == "deny" and got["agent_is_role"] is True
    assert "401" in got["reason"]


def test_masked_columns_and_the_line_deciding_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = workspace(tmp_path)
    analyst = explain(config, capsys, "analyst-bot", "customers")
    assert analyst["decision"] == "allow"
    assert analyst["masked"] == ["email", "note"]
    email, note = analyst["columns"]
    assert (email["name"], email["class"], email["readable"]) == ("email", "pii", False)
    assert email["rule"]["rule"] == "p, analyst, customers, read:pii, deny"
    assert email["rule"]["line"] == line_of(config, "p, analyst, customers, read:pii, deny")
    assert (note["name"], note["class"], note["readable"], note["rule"]) == ("note", "internal", False, None)
    support = explain(config, capsys, "support-bot", "customers")
    assert support["masked"] == ["note"]
    assert support["columns"][0]["readable"] is True
    assert support["columns"][0]["rule"]["rule"] == "p, support, customers, read:pii, allow"


FILTERS = DATASETS + """
[datasets.customers.row_filters]
support = "country = {claims.region}"
analyst = "country in {claims.regions} and active = true"
auditor = "true"
"""


def test_row_filters_without_claims_would_refuse_naming_the_claim(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = workspace(tmp_path, datasets=FILTERS)
    got = explain(config, capsys, "support-bot", "customers")
    assert got["decision"] == "allow"  # describing and listing need no claim; a query does
    rows = got["row_filters"]
    assert rows["applied"] is None
    assert "region" in rows["refused"] and "lacks" in rows["refused"]
    by_key = {f["key"]: f for f in rows["filters"]}
    assert by_key["support"] == {"key": "support", "filter": "country = {claims.region}", "applies": True,
                                 "via": ["support-bot", "support"], "claims": ["region"]}
    assert by_key["auditor"]["applies"] is False and by_key["auditor"]["via"] == []
    assert by_key["analyst"]["claims"] == ["regions"]


def test_row_filters_with_claims_filled_in(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = workspace(tmp_path, datasets=FILTERS)
    one = explain(config, capsys, "support-bot", "customers", "--claim", "region=DE")
    assert one["row_filters"]["applied"] == '[support] country = "DE"'
    assert one["row_filters"]["refused"] is None
    assert one["row_filters"]["claims"] == {"region": "DE"}
    many = explain(config, capsys, "analyst-bot", "customers", "--claim", 'regions=["FR","US"]')
    assert many["row_filters"]["applied"] == '[analyst] country in ["FR", "US"] AND active = true'
    wrong = explain(config, capsys, "support-bot", "customers", "--claim", 'region={"a": 1}')  # an object
    assert wrong["row_filters"]["applied"] is None and "region" in wrong["row_filters"]["refused"]


def test_no_row_filter_for_the_agent_denies_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = workspace(tmp_path, datasets=FILTERS, policy=POLICY + "p, other, customers, read, allow\n"
                                                                    "g, other-bot, other\n")
    got = explain(config, capsys, "other-bot", "customers")
    assert got["decision"] == "deny"
    assert "no row filter of 'customers' applies" in got["reason"]
    assert got["rule"]["rule"] == "p, other, customers, read, allow"  # the policy alone would allow


def test_budgets_the_default_and_an_agents_own(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = workspace(tmp_path, budgets="[default]\nrequests_per_minute = 600\nrows_per_day = 100000\n\n"
                                         "[agents.analyst-bot]\nrows_per_day = 500\n")
    own = explain(config, capsys, "analyst-bot", "orders")["budget"]
    assert own == {"requests_per_minute": 600, "rows_per_day": 500,
                   "from": "budgets.toml [agents.analyst-bot], over [default]"}
    default = explain(config, capsys, "support-bot", "customers")["budget"]
    assert default == {"requests_per_minute": 600, "rows_per_day": 100000, "from": "budgets.toml [default]"}
    none = explain(workspace(tmp_path / "free"), capsys, "support-bot", "customers")["budget"]
    assert none["requests_per_minute"] is None and none["rows_per_day"] is None


def test_approval_required_is_said_and_keeps_the_dataset_out_of_sql_mode(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = workspace(tmp_path, datasets=DATASETS.replace('owner = "sales-ops@example.com"',
                                                           'owner = "sales-ops@example.com"\napproval = "required"'))
    got = explain(config, capsys, "analyst-bot", "orders")
    assert (got["decision"], got["approval"], got["owner"]) == ("allow", "required", "sales-ops@example.com")
    assert got["sql_mode"] == {"enabled": True, "readable": False}
    code = cli.main(["explain", "analyst-bot", "orders", "--config", str(config)])
    text = capsys.readouterr().out
    assert code == 0
    assert "each query waits for a person's approval" in text and "sales-ops@example.com" in text
    assert "refused: a dataset that needs approval is not read in SQL mode" in text


def test_an_http_dataset_says_its_method_and_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    datasets = DATASETS + ('\n[datasets.open_tickets]\nsource = "tickets"\npath = "/tickets"\n'
                           'owner = "leads@example.com"\n')
    config = workspace(tmp_path, datasets=datasets, extra=HTTP_SOURCE + '\n[sql]\nenabled = false\n',
                       policy=POLICY + "p, support, open_tickets, read, allow\n")
    got = explain(config, capsys, "support-bot", "open_tickets")
    assert (got["decision"], got["kind"], got["path"]) == ("allow", "http", "/tickets")
    assert got["proxy"] == {"method": "GET", "path": "/v1/datasets/open_tickets/proxy/{path}",
                            "source_path": "/tickets/{path}"}
    assert got["sql_mode"] == {"enabled": False, "readable": False}


def test_text_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = workspace(tmp_path)
    assert cli.main(["explain", "analyst-bot", "customers", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "analyst-bot reading customers: allow"
    deny_line = line_of(config, "p, analyst, customers, read:pii, deny")
    assert (f"  email (pii): masked, p, analyst, customers, read:pii, deny "
            f"({config.parent / 'policies' / 'policy.csv'} line {deny_line}, via analyst-bot -> analyst)") in lines
    assert "rows:        every row (no row filters)" in lines


def test_an_unknown_dataset_is_exit_1_with_close_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = workspace(tmp_path)
    assert cli.main(["explain", "support-bot", "custmers", "--config", str(config)]) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 1
    assert "no dataset 'custmers'" in out.err and "customers" in out.err
    assert cli.main(["explain", "support-bot", "zzz\x1b[2J", "--config", str(config)]) == 1
    assert "\x1b" not in capsys.readouterr().err  # what was typed is shown escaped


def test_an_invalid_policy_is_exit_1_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = workspace(tmp_path, policy="p, support, customers, read, maybe\n")
    assert cli.main(["explain", "support-bot", "customers", "--config", str(config)]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and "policy.csv" in out.err


@pytest.mark.parametrize("claim", ["sub=someone", "=x", "a b=1", "no-equals-sign", "1st=x", "k=\x00"])
def test_bad_claims_are_exit_2_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], claim: str) -> None:
    config = workspace(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["explain", "support-bot", "customers", "--claim", claim, "--config", str(config)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("agentgate: argument --claim")


def test_the_readme_walkthrough_prints_what_it_says(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's "Why can this agent read that?" example, run on the shipped config (`...` is any text)."""
    repo = Path(__file__).parent.parent
    readme = (repo / "README.md").read_text()
    found = re.search(r"```sh\nagentgate (explain .*?)\n((?:# .*\n)+)```", readme)
    assert found, "no explain example in the README"
    assert cli.main([*shlex.split(found.group(1)), "--config", str(repo / "agentgate.toml")]) == 0
    printed = capsys.readouterr().out.splitlines()
    said = [line.removeprefix("# ") for line in found.group(2).splitlines()]
    assert len(printed) == len(said)
    for line, comment in zip(printed, said, strict=True):
        assert re.fullmatch(".*".join(map(re.escape, comment.split("..."))), line), (line, comment)
