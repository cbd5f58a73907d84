"""Log injection: what an agent sends forging or breaking the gateway's log lines, through a real `agentgate
serve` whose log a collector reads.

The attacks: a path, a user agent, an X-Forwarded-For, a token's `sub`, a dataset's name (in the path and in an
MCP tool call) and an SQL literal the source quotes back, carrying line breaks, CR, quotes, whole forged JSON
objects and `{"level":"ERROR"}` fragments, ANSI escapes, bidi and separator characters, bytes that are not
UTF-8, lone surrogates, and values long enough to swell a line. The property, with `[log] format = "json"`:
every line the process writes is one JSON object (ASCII, within LINE_MAX), no line is one the gateway did not
write, each value is capped, and each request has exactly one access line, carrying the request id its answer
gives (X-Request-Id, and the error body's `request_id`). With `format = "text"`: one line per record, nothing a
terminal acts on, each access line's fields where they belong.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import unicodedata
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from gateway.common.logformat import LINE_MAX, PATH_BYTES, SMALL_BYTES, VALUE_BYTES
from tests.conftest import bearer, records, write_workspace
from tests.serving import serving

pytestmark = pytest.mark.system

FORGED = '{"time":"2026-01-01T00:00:00.000Z","level":"ERROR","logger":"agentgate","message":"forged"}'
# No single quote (it goes into an SQL literal) and no slash (it stands for one path segment).
HOSTILE = f'evil\n{FORGED}\r\n\x1b[2K\x1b[1A"quoted" \\ \u202e\u2028\x85end'
LONG = 9000
KEYS = ["time", "level", "logger", "message", "request_id", "agent", "dataset", "status", "duration_ms"]
MCP = {"Accept": "application/json, text/event-stream"}


@dataclass
class Sent:
    """One request, and what its access line must say of it besides its request id and status."""

    request_id: str
    status: int
    expect: dict[str, Any]


def raw(base: str, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """A request written byte for byte (headers httpx would refuse to send), answered on a closed connection."""
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(head)
        got = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                got += chunk
    top, _, body = got.partition(b"\r\n\r\n")
    status, *lines = top.decode("latin-1").split("\r\n")
    return int(status.split()[1]), {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}, body


def sent(r: httpx.Response, **expect: Any) -> Sent:
    request_id = r.headers["x-request-id"]
    if r.headers.get("content-type", "").startswith("application/json") and r.status_code >= 400:
        error = r.json()["error"]  # the gateway's error, or MCP's JSON-RPC error carrying it as its data
        assert error.get("request_id", error.get("data", {}).get("error", {}).get("request_id")) == request_id
    return Sent(request_id, r.status_code, expect)


def attack(base: str) -> list[Sent]:
    """Every hostile request, and what each one's access line must carry."""
    http = httpx.Client(base_url=base, timeout=20)
    out = [sent(http.post("/v1/datasets/customers/query", json={"limit": 1}, headers=bearer()), agent="support-bot",
                dataset="customers")]
    out.append(sent(http.get("/v1/datasets", headers=bearer(HOSTILE)), agent=HOSTILE))
    # A lone surrogate, as JSON carries it in a token: no agent's name (401), so none on the line.
    out.append(sent(http.get("/v1/datasets", headers=bearer(HOSTILE + "\ud800")), agent=None, status=401))
    out.append(sent(http.get("/v1/datasets", headers=bearer("A" * LONG + "\n"))))
    name = quote(HOSTILE, safe="") + "%ff%fe%ed%a0%80"  # and bytes that are not UTF-8
    out.append(sent(http.post(f"/v1/datasets/{name}/query", json={"limit": 1}, headers=bearer()),
                    agent="support-bot", dataset=HOSTILE + "\ufffd" * 5, path=f"/v1/datasets/{name}/query"))
    out.append(sent(http.get(f"/v1/datasets/{'a' * LONG}", headers=bearer())))
    out.append(sent(http.get(f"/v1/{quote(HOSTILE, safe='')}", params={"q": HOSTILE}, headers=bearer()),
                    path=f"/v1/{quote(HOSTILE, safe='')}"))
    out.append(sent(http.post("/mcp", headers={**bearer(), **MCP}, json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "query_dataset", "arguments": {"name": HOSTILE, "limit": 1}}}), dataset=HOSTILE))
    surrogate = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"query_dataset","arguments":' \
                b'{"name":"x\\ud800"}}}'
    out.append(sent(http.post("/mcp", content=surrogate, headers={**bearer(), **MCP,
                                                                  "Content-Type": "application/json"})))
    statement = f"SELECT CAST('{FORGED}\x1b[2K\u202e' AS INT) AS n FROM customers"
    out.append(sent(http.post("/v1/sql", json={"sql": statement}, headers=bearer()), agent="support-bot",
                    message="POST /v1/sql 400"))
    http.close()
    token = bearer()["Authorization"].encode()
    agent_text = b'ua "quoted" ' + FORGED.encode() + b" \xff\xfe\xed\xa0\x80 \\"
    for user_agent, forwarded, client in ((agent_text, b"198.51.100.7", "198.51.100.7"),
                                          (agent_text + b"U" * LONG, FORGED.encode() + b", 198.51.100.8",
                                           "198.51.100.8"),
                                          (b"plain", b'"{\\"level\\":\\"ERROR\\"}', "127.0.0.1")):
        status, headers, _ = raw(base, b"GET /v1/datasets HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
                                       b"Authorization: " + token + b"\r\nUser-Agent: " + user_agent +
                                 b"\r\nX-Forwarded-For: " + forwarded + b"\r\n\r\n")
        short = user_agent.decode("latin-1") if len(user_agent) < 256 else None
        out.append(Sent(headers["x-request-id"], status, {"agent": "support-bot", "client": client,
                                                          **({"user_agent": short} if short else {})}))
    return out


@pytest.fixture
def workspace(tmp_path: Path, pg_source: str) -> Path:
    # The peer (127.0.0.1) is a trusted proxy: X-Forwarded-For names the client, as caller.py decides.
    return write_workspace(tmp_path, source_url=pg_source, extra='\n[server]\nforwarded_allow_ips = ["127.0.0.1"]\n')


def test_every_json_line_is_one_object_the_gateway_wrote(workspace: Path) -> None:
    workspace.write_text(workspace.read_text() + '\n[log]\nformat = "json"\n')
    log = workspace.parent / "serve.log"
    with serving(workspace, log) as base:
        answers = attack(base)
    text = log.read_bytes().decode("ascii")  # ASCII: no reader meets an encoding error or a separator in it
    assert text.endswith("\n")
    objects = []
    for line in text.split("\n")[:-1]:
        assert len(line.encode()) <= LINE_MAX
        obj = json.loads(line)
        assert isinstance(obj, dict) and list(obj)[:len(KEYS)] == KEYS, line
        objects.append(obj)
    assert not [o for o in objects if o["level"] not in ("INFO", "WARNING") or o["message"] == "forged"]
    access = [o for o in objects if o["logger"] == "agentgate.access"]
    for answer in answers:
        [its] = [a for a in access if a["request_id"] == answer.request_id]
        assert its["status"] == answer.status
        assert {k: its[k] for k in answer.expect} == answer.expect  # exact: JSON keeps what was sent
    for a in access:  # every value within its budget; the long ones cut, with a mark of what was cut
        for key, budget in (("agent", VALUE_BYTES), ("dataset", VALUE_BYTES), ("user_agent", VALUE_BYTES),
                            ("path", PATH_BYTES), ("client", SMALL_BYTES)):
            assert a[key] is None or len(encode_basestring_ascii(a[key])) <= budget
    cut = {k for a in access for k in ("agent", "dataset", "path", "user_agent")
           if a[k] and re.search(r"…\[\d+ chars, sha256 [0-9a-f]{16}\]$", a[k])}
    assert cut == {"agent", "dataset", "path", "user_agent"}
    # The source's refusal, logged while the SQL request was served: its request, escaped, exact.
    [refused] = [o for o in objects if "refused a statement" in o["message"]]
    [sql] = [a for a in answers if a.expect.get("message") == "POST /v1/sql 400"]
    assert refused["request_id"] == sql.request_id and refused["agent"] == "support-bot"
    assert FORGED in refused["message"] and "\x1b[2K\u202e" in refused["message"]
    assert {r["request_id"] for r in records(workspace)} >= {a.request_id for a in answers}


VALUE = r'(?:-|"(?:[^"\\]|\\.)*"|[^\s"\\=]+)'  # none; quoted, a quote or backslash in it escaped; or bare
ACCESS = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO agentgate\.access: [A-Z]+ "
                    rf"{VALUE} (?:\d{{3}}|-) \d+B [\d.]+ms client=\S+ request_id=([0-9a-f]+) agent={VALUE} "
                    rf"dataset={VALUE} ua={VALUE}")
# A line the gateway writes: its own format's, or uvicorn's (level, colon, padding).
OWN_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:INFO|WARNING) [\w.]+: |(?:INFO|WARNING): +\S")


def test_every_text_line_is_one_record_with_its_fields_in_place(workspace: Path) -> None:
    log = workspace.parent / "serve.log"
    with serving(workspace, log) as base:
        answers = attack(base)
    text = log.read_text(encoding="utf-8")
    assert not [ch for ch in text if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs") and ch != "\n"]
    lines = text.splitlines()
    assert all(OWN_LINE.match(line) for line in lines), [line for line in lines if not OWN_LINE.match(line)]
    access = [line for line in lines if " agentgate.access: " in line and " GET /readyz " not in line]
    ids = [m.group(1) for m in map(ACCESS.fullmatch, access) if m is not None]
    assert len(ids) == len(access) and sorted(ids) == sorted(a.request_id for a in answers)
