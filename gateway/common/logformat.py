"""The gateway's log lines in the two forms `[log] format` names, and the request each line belongs to.

`text` is for a person: textsafe.SafeFormatter's line (agent input escaped, one record a line), a line logged
while a request is served ending in its `request_id=`. `json` is for a collector: one JSON object a line, its
keys always `time` (ISO 8601, UTC), `level`, `logger`, `message`, `request_id`, `agent`, `dataset`, `status`,
`duration_ms` (null where they are not known: outside a request, or before the core named them; `status` and
`duration_ms` only on the access line), `exception` when there is one, and the access line's own fields
(`AccessLine`). JSON escapes every control character itself; `ensure_ascii` keeps the line ASCII, so no
reader splits it (U+2028 is a line break to some) and a lone surrogate is an escape, not an encoding error.
Each value an agent can fill is cut to a budget of bytes as encoded (`fit`), so that no line grows past
LINE_MAX, whatever is sent.

The request: transports/accesslog.py opens a `RequestContext` around each HTTP request, in a context variable,
and core/pipeline.py names in it each call's request id and trace (the agent once its token verified, the
dataset named); the formatters read it as they write any line logged meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any, Protocol

from gateway.common.textsafe import SafeFormatter, cap, terminal

LINE_MAX = 16_384  # bytes of a JSON line at most (Docker's json-file driver splits longer lines in parts)
MESSAGE_BYTES = 4096  # a value's budget, its JSON string's bytes: with these a line stays under LINE_MAX
EXCEPTION_BYTES = 8192
PATH_BYTES = 1024
VALUE_BYTES = 512  # agent, dataset, user agent
SMALL_BYTES = 128  # method, client, request id
NAME_MAX = 256  # characters of an agent or dataset name kept, in either form (textsafe.cap)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _Traced(Protocol):  # core.types.Trace, which common may not import
    @property
    def agent(self) -> _Named | None: ...

    @property
    def dataset(self) -> str | None: ...


class RequestContext:
    """The HTTP request being served: the id and trace of its latest call to the core (None before one)."""

    __slots__ = ("request_id", "trace")

    def __init__(self) -> None:
        self.request_id: str | None = None
        self.trace: _Traced | None = None

    def agent(self) -> str | None:
        trace = self.trace
        agent = trace.agent if trace is not None else None
        return cap(agent.name, NAME_MAX) if agent is not None else None

    def dataset(self) -> str | None:
        return cap(self.trace.dataset, NAME_MAX) if self.trace is not None else None


_CURRENT: ContextVar[RequestContext | None] = ContextVar("agentgate_request", default=None)


def opened() -> tuple[RequestContext, Token[RequestContext | None]]:
    context = RequestContext()
    return context, _CURRENT.set(context)


def closed(context: RequestContext, token: Token[RequestContext | None]) -> None:
    """The request is answered. A task it started keeps a copy of the variable: emptied, the context names no
    request in the lines that task logs later."""
    context.request_id = context.trace = None
    _CURRENT.reset(token)


def entered(request_id: str, trace: _Traced) -> None:
    """A call to the core (Gateway.handle): the lines logged from now on name its request id, agent and dataset."""
    context = _CURRENT.get()
    if context is not None:
        context.request_id, context.trace = request_id, trace


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__, slower
class AccessLine:
    """One HTTP request as the access log tells it (transports/accesslog.py); `path` and `user_agent` already
    capped in characters (textsafe.cap), `agent` and `dataset` as the core saw them."""

    method: str
    path: str
    status: int | None  # None: the client left before an answer started
    bytes: int  # of the answer's body
    duration_ms: float
    client: str | None
    user_agent: str | None
    request_id: str | None
    agent: str | None
    dataset: str | None

    def json(self, head: str) -> str:
        """The JSON line, after `head` (its time, level, logger and message, written): the object JsonFormatter
        would encode, written out here (a third of the time: access lines are most of the log)."""
        status = "null" if self.status is None else int(self.status)
        return (f'{head},"request_id":{_string(fit(self.request_id, SMALL_BYTES))},"agent":'
                f'{_string(fit(self.agent, VALUE_BYTES))},"dataset":{_string(fit(self.dataset, VALUE_BYTES))},'
                f'"status":{status},"duration_ms":{float(self.duration_ms)!r},"method":'
                f'{_string(fit(self.method, SMALL_BYTES))},"path":{_string(fit(self.path, PATH_BYTES))},"client":'
                f'{_string(fit(self.client, SMALL_BYTES))},"user_agent":{_string(fit(self.user_agent, VALUE_BYTES))},'
                f'"bytes":{int(self.bytes)}}}')

    def text(self) -> str:
        """The access line in the text form, after the logger's name: each value an agent wrote as `_value`
        writes it (the client's address is a parsed address or the TCP peer's, the request id the gateway's)."""
        return (f"{_value(self.method)} {_value(self.path)} {self.status or '-'} {self.bytes}B "
                f"{self.duration_ms:.1f}ms client={self.client or '-'} request_id={self.request_id or '-'} "
                f"agent={_value(self.agent)} dataset={_value(self.dataset)} ua={_value(self.user_agent)}")


_QUOTED = re.compile(r'[\s"\\=]')  # what a value is quoted for (logfmt's rule), besides what is not printable


def _value(value: str | None) -> str:
    """`-` for none; a value with no space, quote, backslash, `=` or unprintable character as it is; any other
    in quotes, a quote or a backslash in it escaped (so it cannot end early), its controls escaped by
    textsafe.terminal."""
    if value is None:
        return "-"
    if value and value != "-" and value.isprintable() and _QUOTED.search(value) is None:
        return value
    return '"' + terminal(value.replace("\\", "\\\\").replace('"', '\\"')) + '"'


_MARK_BYTES = 64  # what the mark of a cut takes at most, escaped


def fit(text: str | None, budget: int) -> str | None:
    """`text` whole if its JSON string takes at most `budget` bytes, else its start and a mark of what was cut
    (its length and the start of its SHA-256, as textsafe.cap's), within the budget."""
    # Escaped, an ASCII character takes 6 bytes at most (\u001b), any other 12 (a surrogate pair).
    if text is None or len(text) * 12 + 2 <= budget or (len(text) * 6 + 2 <= budget and text.isascii()):
        return text
    size = len(encode_basestring_ascii(text))
    if size <= budget:
        return text
    keep = len(text) * (budget - _MARK_BYTES) // size
    while keep and len(encode_basestring_ascii(text[:keep])) > budget - _MARK_BYTES:
        keep //= 2
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[:keep]}…[{len(text)} chars, sha256 {digest}]"


_second: tuple[int, str] = (-1, "")  # the last second written, formatted: most lines share it with another


def iso_time(created: float) -> str:
    """`created` (a LogRecord's) in ISO 8601, UTC, to the millisecond: 2026-12-01T09:30:00.123Z."""
    global _second
    second = int(created)
    if _second[0] != second:
        _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second[1]}.{int((created - second) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """Every record as one JSON object on one line (see the module doc); for logging's dictConfig as
    `{"()": "gateway.common.logformat.JsonFormatter"}`, uvicorn's own loggers included."""

    def format(self, record: logging.LogRecord) -> str:
        message = fit(record.getMessage(), MESSAGE_BYTES)
        access: AccessLine | None = getattr(record, "access", None)
        failure = _failure(self, record)
        if access is not None:
            out = access.json(f'{{"time":"{iso_time(record.created)}","level":{_string(record.levelname)},'
                              f'"logger":{_string(record.name)},"message":{_string(message)}')
            return f'{out[:-1]},"exception":{_string(fit(failure, EXCEPTION_BYTES))}}}' if failure else out
        line: dict[str, Any] = {"time": iso_time(record.created), "level": record.levelname, "logger": record.name,
                                "message": message}
        context = _CURRENT.get()
        if context is None:
            line.update(_NO_REQUEST)
        else:
            line.update(request_id=context.request_id, agent=fit(context.agent(), VALUE_BYTES),
                        dataset=fit(context.dataset(), VALUE_BYTES), status=None, duration_ms=None)
        if failure:
            line["exception"] = fit(failure, EXCEPTION_BYTES)
        return _encode(line)


def _string(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


_encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder (json.dumps makes one a call); ensure_ascii


_NO_REQUEST: dict[str, Any] = {"request_id": None, "agent": None, "dataset": None, "status": None,
                               "duration_ms": None}


def _failure(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The record's traceback (and stack, when it was asked for), as logging's Formatter writes them."""
    parts = []
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts)


class TextFormatter(SafeFormatter):
    """SafeFormatter's line (see textsafe), followed by the access line's fields, or by the request id of the
    request being served when the line was logged."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        access: AccessLine | None = getattr(record, "access", None)
        if access is not None:  # its own message: each field where it belongs, whatever the agent wrote
            record.message = access.text()
            return super().formatMessage(record)
        line = super().formatMessage(record)
        context = _CURRENT.get()
        if context is not None and context.request_id is not None:
            line += f" request_id={context.request_id}"
        return line


def say(line: str, level: int = logging.WARNING) -> None:
    """One line for whoever runs the command, on stderr: as it is where the log is text, as a log line (logger
    `agentgate`) where it is JSON, so that a collector reads every line as one object."""
    if any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers):
        logging.getLogger("agentgate").log(level, line)
    else:
        print(line, file=sys.stderr)
