"""Proxy paths an upstream server would read differently from the gateway: `;` path parameters after dot runs
(Tomcat, Jetty and Spring read `..;x` as `..`), anything NFKC-normalising to a dot segment or a separator
(full-width dots and solidi, dot leaders), slash- and dot-like characters some platforms fold, backslashes in
every encoding. Each is refused with 400 before the source is asked: the real loopback source of
tests/test_http_sources.py records every request it gets, and gets none."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from connectors.base import InvalidQuery
from connectors.http import confine
from tests.conftest import bearer, records, token
from tests.test_http_sources import (  # noqa: F401  (fixtures: the recording upstream and a gateway before it)
    _raw_get,
    client,
    http_workspace,
    upstream,
)

pytestmark = pytest.mark.integration


def _enc(text: str) -> str:
    """Percent-encoded UTF-8, every byte (as an agent would send a character the URL may not hold)."""
    return "".join(f"%{b:02X}" for b in text.encode())


FW_DOT, LEADER, TWO_LEADER, ELLIPSIS, SMALL_DOT = "\uff0e", "\u2024", "\u2025", "\u2026", "\ufe52"
FW_SLASH, FW_BACKSLASH, SMALL_BACKSLASH = "\uff0f", "\uff3c", "\ufe68"

# Dot runs with path parameters: literal, encoded, the `;` encoded, doubly encoded, with a value.
PATH_PARAMETERS = [
    "..;/held/x", ".;/x", "a/..;/..;/x", "..;x/held", "..;jsessionid=1/x", "...;/x", "%2e%2e;x/held",
    "%2E%2E;/held", "..%3b/held", "%2e%2e%3bx/held", "%252e%252e%253b/held", ".%2e;/held", ";/held", ";x/held",
    "a/;/b",
]
# What NFKC turns into a dot segment or a separator, each encoded as a client would, some doubly.
NFKC_FORMS = [
    _enc(FW_DOT * 2) + "/held", _enc(FW_DOT) + "/x", _enc(LEADER * 2) + "/held", _enc(TWO_LEADER) + "/held",
    _enc(ELLIPSIS) + "/x", _enc(SMALL_DOT * 2) + "/held", "." + _enc(FW_DOT) + "/held",
    "%2e" + _enc(LEADER) + "/held", _enc(FW_DOT * 2) + ";x/held", quote(_enc(FW_DOT * 2)) + "/held",
    "a" + _enc(FW_SLASH) + "..", _enc(FW_SLASH) + "evil.example", _enc(FW_BACKSLASH) + "x",
    "a" + _enc(SMALL_BACKSLASH) + "b", _enc("\u2215") + "x", _enc("\u2044") + "x", _enc("\u3002\u3002") + "/held",
    # A full-width percent sign and digits: normalised, then decoded, they are a dot.
    _enc("\uff05\uff12\uff45\uff05\uff12\uff45") + "/held", "http" + _enc("\uff1a") + "x",
]
# Backslashes and their encodings, and what else reads as a line break.
BACKSLASHES = ["a%5c..%5cheld", "a%5C..", "%255c", "%25255c", "..%5cheld", _enc("\u2216") + "x",
               _enc("\u0085") + "x", _enc("\u2028") + "x", "%C0%AE%C0%AE/held", "%C1%9C"]


def _refused_unseen(gw: TestClient, workspace: Path, seen: list[str], raw: str, records_before: int) -> None:
    """`raw` (the part after /proxy/) is a 400, recorded, and the upstream saw nothing."""
    assert gw.portal is not None
    status, body = gw.portal.call(_raw_get, gw.app, f"/v1/datasets/tickets/proxy/{raw}".encode(),
                                      f"Bearer {token('support-bot')}")
    assert status == 400, (raw, body)
    assert b'"bad_request"' in body, body
    assert seen == [], (raw, seen)
    recs = records(workspace)
    assert len(recs) == records_before + 1
    assert recs[-1]["status"] == 400 and recs[-1]["dataset"] == "tickets" and recs[-1]["decision"] == "error"


@pytest.mark.parametrize("kind,spellings", [("path parameters", PATH_PARAMETERS), ("NFKC forms", NFKC_FORMS),
                                            ("backslashes", BACKSLASHES)])
def test_reinterpreted_paths_never_reach_the_source(client: TestClient, http_workspace: Path,  # noqa: F811
                                                    upstream: tuple[str, list[str]], kind: str,  # noqa: F811
                                                    spellings: list[str]) -> None:
    for n, raw in enumerate(spellings):
        _refused_unseen(client, http_workspace, upstream[1], raw, n)


def test_through_the_http_client_too(client: TestClient, http_workspace: Path,  # noqa: F811
                                     upstream: tuple[str, list[str]]) -> None:  # noqa: F811
    """As a client library sends them (httpx keeps `..;` and encoded characters as they are)."""
    for n, raw in enumerate(["..;/held/x", _enc(FW_DOT * 2) + "/held", "x/" + _enc(TWO_LEADER) + ";a/y"]):
        r = client.get(f"/v1/datasets/tickets/proxy/{raw}", headers=bearer())
        assert r.status_code == 400, (raw, r.text)
        assert upstream[1] == []
        assert len(records(http_workspace)) == n + 1


def test_harmless_neighbours_still_pass(client: TestClient, upstream: tuple[str, list[str]]) -> None:  # noqa: F811
    """Not over-refused: a matrix parameter on a name, dots inside a name, a non-ASCII name, an ellipsis inside
    a word, a full-width dot between letters reach the source as they were asked."""
    for raw, sent in [("a;v=1/b", "/api/tickets/a;v=1/b"), ("a..b", "/api/tickets/a..b"),
                      ("v1.2/file.tar.gz", "/api/tickets/v1.2/file.tar.gz"),
                      ("caf%C3%A9", "/api/tickets/caf%C3%A9"), ("x" + _enc(ELLIPSIS), "/api/tickets/x%E2%80%A6"),
                      ("a" + _enc(FW_DOT) + "b", "/api/tickets/a%EF%BC%8Eb")]:
        r = client.get(f"/v1/datasets/tickets/proxy/{raw}", headers=bearer())
        assert r.status_code == 200, (raw, r.text)
        assert upstream[1][-1] == sent


@pytest.mark.unit
def test_confine_refuses_every_spelling() -> None:
    for raw in PATH_PARAMETERS + NFKC_FORMS + BACKSLASHES:
        with pytest.raises(InvalidQuery):
            confine(raw)
    # Decoding and normalising without end is refused, not followed.
    with pytest.raises(InvalidQuery):
        confine("%2525252525252525252e")
