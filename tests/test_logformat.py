"""[log]: the table's parsing, the two line formats (common/logformat.py) and the logging config `serve` hands
uvicorn (cli/logs.py). The attacks on them through a real `serve` are tests/test_attacks_log_injection.py."""

from __future__ import annotations

import argparse
import contextvars
import hashlib
import importlib
import io
import json
import logging
import re
import sys
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

import pytest

from gateway.cli.logs import LOG_FORMAT, configure, say, uvicorn_config
from gateway.cli.serve import _log_level
from gateway.common import logformat
from gateway.common.errors import ConfigError
from gateway.common.logformat import LINE_MAX, AccessLine, JsonFormatter, TextFormatter, fit
from gateway.config import LogSettings, load_settings

pytestmark = pytest.mark.unit

BASE = '[auth]\nsecret = "' + "s" * 40 + '"\n'
KEYS = ["time", "level", "logger", "message", "request_id", "agent", "dataset", "status", "duration_ms"]
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# What agents write to forge or break a line: a line break and a whole forged object, CR, quotes, ANSI erase and
# cursor moves, C1, bidi override, U+2028 (a line break to some readers), NUL, a lone surrogate, astral text.
HOSTILE = ('x\n{"time":"2026-01-01T00:00:00.000Z","level":"ERROR","logger":"agentgate","message":"forged"}',
           "ok\rFORGED", 'quote " and \\ backslash', "\x1b[2K\x1b[1Aerased", "\x9b2K", "\u202eevil", "a\u2028b",
           "nul\x00", "lone \ud800 surrogate", "astral \U0001f600")


def write(tmp_path: Path, log: str) -> Path:
    path = tmp_path / "agentgate.toml"
    path.write_text(BASE + log)
    return path


# --- [log] --------------------------------------------------------------------------------------------------

def test_the_log_table_defaults_and_values(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")).log == LogSettings(format="text", level=None, access=True)
    cfg = write(tmp_path, '[log]\nformat = "json"\nlevel = "warning"\naccess = false\n')
    assert load_settings(cfg).log == LogSettings(format="json", level="warning", access=False)


@pytest.mark.parametrize(("table", "key", "fault"), [
    ('format = "xml"', "log.format", "'xml' is not one of: text, json"),
    ('format = "JSON"', "log.format", "'JSON' is not one of: text, json"),
    ("format = 1", "log.format", "must be a string"),
    ('level = "verbose"', "log.level", "is not one of: debug, info, warning, error"),
    ('access = "yes"', "log.access", "must be true or false"),
    ('colour = "red"', "log.colour", "unknown key (expected one of: access, format, level)"),
])
def test_the_log_table_refuses_what_it_does_not_know(tmp_path: Path, table: str, key: str, fault: str) -> None:
    cfg = write(tmp_path, f"[log]\n{table}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg)
    assert caught.value.key == key and fault in str(caught.value) and str(cfg) in str(caught.value)


def test_log_level_the_option_wins_over_the_table(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[log]\nlevel = "warning"\n'))
    assert _log_level(settings, argparse.Namespace(log_level=None)) == "warning"
    assert _log_level(settings, argparse.Namespace(log_level="debug")) == "debug"
    assert _log_level(load_settings(write(tmp_path, "")), argparse.Namespace(log_level=None)) == "info"


# --- the JSON line ------------------------------------------------------------------------------------------

@dataclass
class Named:
    name: str


@dataclass
class Traced:
    agent: Named | None
    dataset: str | None


def record(msg: str = "hello %s", args: tuple[Any, ...] = ("world",), **extra: Any) -> logging.LogRecord:
    log = logging.getLogger("agentgate.test-logformat")
    return log.makeRecord(log.name, logging.WARNING, __file__, 1, msg, args, None, extra=extra or None)


def one_object(line: str) -> dict[str, Any]:
    """The line is one JSON object, one line to every reader, ASCII, within LINE_MAX."""
    assert line.isascii() and len(line.encode()) <= LINE_MAX
    assert len(line.splitlines()) == 1  # str.splitlines breaks at \r, \x1c-\x1e, \x85, U+2028 and U+2029 too
    obj = json.loads(line)
    assert isinstance(obj, dict) and list(obj)[:len(KEYS)] == KEYS and ISO.fullmatch(obj["time"])
    return obj


def test_a_json_line_outside_a_request() -> None:
    obj = one_object(JsonFormatter().format(record()))
    assert obj["message"] == "hello world" and obj["level"] == "WARNING" and obj["logger"] == "agentgate.test-logformat"
    assert [obj[k] for k in KEYS[4:]] == [None] * 5 and "exception" not in obj


def test_a_json_line_inside_a_request_names_it_until_it_is_answered() -> None:
    context, token = logformat.opened()
    try:
        assert one_object(JsonFormatter().format(record()))["request_id"] is None  # before the core named it
        logformat.entered("r-1", Traced(agent=None, dataset="customers"))
        obj = one_object(JsonFormatter().format(record()))
        assert (obj["request_id"], obj["agent"], obj["dataset"], obj["status"]) == ("r-1", None, "customers", None)
        logformat.entered("r-1", Traced(agent=Named("support-bot"), dataset="customers"))
        assert one_object(JsonFormatter().format(record()))["agent"] == "support-bot"
        copied = contextvars.copy_context()  # what a task started during the request keeps
    finally:
        logformat.closed(context, token)
    assert one_object(JsonFormatter().format(record()))["request_id"] is None
    later = copied.run(lambda: one_object(JsonFormatter().format(record())))
    assert later["request_id"] is None and later["agent"] is None


def test_what_agents_write_is_one_exact_json_value() -> None:
    for text in HOSTILE:
        assert one_object(JsonFormatter().format(record("refused: %s", (text,))))["message"] == "refused: " + text
    try:
        raise ValueError(HOSTILE[0])
    except ValueError:
        rec = logging.getLogger("agentgate.test").makeRecord("agentgate.test", logging.ERROR, __file__, 1, "failed",
                                                             (), sys.exc_info())
    obj = one_object(JsonFormatter().format(rec))
    assert obj["exception"].startswith("Traceback") and obj["exception"].endswith("ValueError: " + HOSTILE[0])


def test_every_value_is_cut_to_its_budget_and_the_line_to_line_max() -> None:
    for text in ("a" * 5000, "\x1b" * 5000, "\U0001f600" * 5000, "é" * 100_000):
        for budget in (128, 512, 4096):
            kept = fit(text, budget)
            assert kept is not None and len(encode_basestring_ascii(kept)) <= budget
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            assert kept.endswith(f"[{len(text)} chars, sha256 {digest}]")
    assert fit("short", 128) == "short" and fit(None, 128) is None
    huge = "\U0001f600\n" * 50_000
    line = AccessLine(method=huge, path=huge, status=200, bytes=1, duration_ms=1.0, client=huge, user_agent=huge,
                      request_id=huge, agent=huge, dataset=huge)
    try:
        raise RuntimeError(huge)
    except RuntimeError:
        rec = record(huge, (), access=line)
        rec.exc_info = sys.exc_info()
    obj = one_object(JsonFormatter().format(rec))
    assert all("chars, sha256" in obj[k] for k in ("message", "path", "agent", "user_agent", "exception"))


def test_the_access_line_fields() -> None:
    line = AccessLine(method="POST", path="/v1/datasets/customers/query", status=200, bytes=512, duration_ms=3.25,
                      client="10.0.0.7", user_agent="agent-sdk/2.1", request_id="abc", agent="support-bot",
                      dataset="customers")
    obj = one_object(JsonFormatter().format(record("%s %s %s", ("POST", line.path, 200), access=line)))
    assert obj == {"time": obj["time"], "level": "WARNING", "logger": "agentgate.test-logformat",
                   "message": "POST /v1/datasets/customers/query 200", "request_id": "abc", "agent": "support-bot",
                   "dataset": "customers", "status": 200, "duration_ms": 3.25, "method": "POST",
                   "path": "/v1/datasets/customers/query", "client": "10.0.0.7", "user_agent": "agent-sdk/2.1",
                   "bytes": 512}


# --- the text line ------------------------------------------------------------------------------------------

VALUE = r'"(?:[^"\\]|\\.)*"|[^\s"\\=]+'  # quoted, a quote or backslash in it escaped; or bare, with neither
TEXT_ACCESS = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING agentgate\.test-logformat: POST "
                         rf"({VALUE}) 200 12B 3\.2ms client=10\.0\.0\.7 request_id=r-9 agent=({VALUE}) dataset=(-) "
                         rf"ua=({VALUE})")


def access_text(text: str) -> str:
    line = AccessLine(method="POST", path=text, status=200, bytes=12, duration_ms=3.2, client="10.0.0.7",
                      user_agent=text, request_id="r-9", agent=text, dataset=None)
    return TextFormatter(LOG_FORMAT).format(record("%s %s %s", ("POST", text, 200), access=line))


def test_a_text_access_line_quotes_what_agents_wrote() -> None:
    for text in (*HOSTILE, 'a" request_id=forged dataset="x', 'back\\" slash', "sp ace", "k=v", "-", ""):
        out = access_text(text)
        found = TEXT_ACCESS.fullmatch(out)
        assert found is not None and len(out.splitlines()) == 1, out
        assert found.group(1) == found.group(2) == found.group(4) and found.group(1).startswith('"'), out
    plain = TEXT_ACCESS.fullmatch(access_text("support-bot"))
    assert plain is not None and plain.group(2) == "support-bot"


def test_a_text_line_inside_a_request_ends_with_its_id() -> None:
    context, token = logformat.opened()
    try:
        logformat.entered("r-2", Traced(agent=Named("bot"), dataset=None))
        out = TextFormatter(LOG_FORMAT).format(record("refused: %s", (HOSTILE[0],)))
    finally:
        logformat.closed(context, token)
    assert out.endswith(' request_id=r-2') and len(out.splitlines()) == 1 and "\\x0a{" in out
    assert not TextFormatter(LOG_FORMAT).format(record()).endswith("request_id=r-2")


# --- the config handed to uvicorn (every worker applies it) ------------------------------------------------

def formatter_of(spec: dict[str, Any]) -> logging.Formatter:
    module, _, name = spec["()"].rpartition(".")
    options = {k: v for k, v in spec.items() if k != "()"}
    made: logging.Formatter = getattr(importlib.import_module(module), name)(**options)
    return made


def test_uvicorns_config_in_json_writes_every_line_as_json() -> None:
    config = uvicorn_config("debug", LogSettings(format="json"))
    assert set(config["formatters"]) == {"gateway", "default", "access"}
    assert config["root"]["level"] == "DEBUG" and config["loggers"]["agentgate.access"]["level"] == "INFO"
    for spec in config["formatters"].values():
        uvicorn_line = logging.makeLogRecord({"name": "uvicorn.error", "levelno": 20, "levelname": "INFO",
                                              "msg": "Uvicorn running on %s://%s:%d (Press CTRL+C to quit)",
                                              "args": ("http", "127.0.0.1", 8080), "color_message": "\x1b[1m..."})
        obj = one_object(formatter_of(spec).format(uvicorn_line))
        assert obj["message"] == "Uvicorn running on http://127.0.0.1:8080 (Press CTRL+C to quit)"


def test_uvicorns_config_in_text_and_the_access_log_turned_off() -> None:
    config = uvicorn_config("info", LogSettings(access=False))
    assert isinstance(formatter_of(config["formatters"]["gateway"]), TextFormatter)
    uvicorn_line = logging.makeLogRecord({"name": "uvicorn.error", "levelno": logging.ERROR, "levelname": "ERROR",
                                          "msg": "Invalid request: %s", "args": ("\x1b[2K\rforged\n",)})
    line = formatter_of(config["formatters"]["default"]).format(uvicorn_line)  # uvicorn's lines: the same shape
    assert re.fullmatch(r"\S+ \S+ ERROR uvicorn\.error: Invalid request: \\x1b\[2K\\x0dforged\\x0a", line), line
    assert config["loggers"]["agentgate.access"]["level"] == "WARNING"  # above the INFO its lines are written at
    assert uvicorn_config("info") == uvicorn_config("info", LogSettings())


def test_what_serve_says_outside_the_log_is_a_json_line_where_the_log_is_json(capsys: pytest.CaptureFixture[str]
                                                                             ) -> None:
    """serve's own lines (the demo secret's warning, a fault before it listens) are log lines in JSON; as ever in
    text."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        root.handlers[:] = []  # a process whose logging nobody set up (pytest's own handlers would be kept)
        configure(LogSettings(format="json"), "info")
        say("agentgate: warning: the JWT secret is the shipped demo one")
        say("agentgate: the store could not be reached", logging.ERROR)
        configure()
        say("agentgate: as ever")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    said = capsys.readouterr().err.splitlines()
    first, second = one_object(said[0]), one_object(said[1])
    assert (first["level"], first["logger"], first["message"]) == (
        "WARNING", "agentgate", "agentgate: warning: the JWT secret is the shipped demo one")
    assert second["level"] == "ERROR" and said[2:] == ["agentgate: as ever"]


def test_configure_keeps_a_hosts_own_logging() -> None:
    """As logging.basicConfig: where the host set up logging (a program calling main(), a test run), the command
    keeps it, its level included; it neither drops the host's handlers nor writes to a stream it did not name."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    host = logging.StreamHandler(io.StringIO())
    try:
        root.handlers[:] = [host]
        root.setLevel(logging.ERROR)
        configure(LogSettings(format="json"), "debug")
        assert root.handlers == [host] and root.level == logging.ERROR
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
