"""What agents wrote, made safe for the three places people read it: terminals, spreadsheets and log files.

An agent controls many strings the gateway keeps: its name (the token's `sub`), the work unit, the query,
the dataset it names, its user agent. Reviewers read them later where some characters act instead of
showing: in a terminal, control characters move the cursor, erase lines (ESC [2K, CR) or start new ones
(LF), and bidi controls reorder what is shown; in a spreadsheet, a cell that begins with `=`, `+`, `-` or
`@` is a formula; in a log file, a line break starts an entry that looks like the gateway's own.

`terminal` shows each such character as an escape (`\\x1b`, `\\u202e`), so one record is one line and reads
as stored; `spreadsheet_cell` makes a would-be formula text; `SafeFormatter` does both of the first for
every log record. JSON needs none of this: it escapes control characters itself and stays exact.
"""

from __future__ import annotations

import hashlib
import logging
import re

USER_AGENT_MAX = 256  # characters of a User-Agent kept in the record
_KEPT = 200  # of a longer one: its start, then its length and a digest, within USER_AGENT_MAX

# Code points a terminal acts on or a reader cannot see: C0, DEL and C1 controls (category Cc), format
# characters (Cf: bidi embeddings, overrides and isolates, zero-width characters, the BOM, tag characters),
# the line and paragraph separators (Zl, Zp), and lone surrogates (Cs, which no UTF-8 stream can carry).
# Cf is listed by hand (Unicode 15.0): a test checks the list against the running Python's unicodedata.
_INVISIBLE = (
    "\x00-\x1f\x7f-\x9f"
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064"
    "\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
    "\U000e0020-\U000e007f"
)
_UNSAFE = re.compile(f"[{_INVISIBLE}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def terminal(text: str) -> str:
    """`text` with every control, format and separator character shown as `\\xNN`, `\\uNNNN` or
    `\\UNNNNNNNN`: printed, it stays on one line, moves no cursor and reorders nothing. A backslash is left as
    it is, so an agent may write `\\x1b` literally and it reads like an escaped ESC: the JSON outputs tell them
    apart."""
    if text.isprintable():  # the common case, one C scan: what it passes (no Cc, Cf, Z*, Cs) needs no escape
        return text
    return _UNSAFE.sub(_escape, text)


def multiline(text: str) -> str:
    """`terminal` for text whose line breaks are its own (a pretty-printed body on the review page): each line
    escaped, the line feeds between them kept. A CR or a separator inside a line is still escaped."""
    if text.isprintable():
        return text
    return "\n".join(terminal(line) for line in text.split("\n"))


# A cell a spreadsheet reads as a formula (OWASP, CSV injection): one that begins with `=`, `+`, `-`, `@`, a tab
# or a CR, or with one of the full-width forms some spreadsheets fold onto those, also after leading blanks or
# invisible characters (" =1+1", "\n@SUM(A1)"), which some spreadsheets skip before deciding.
_FORMULA = re.compile(f"[\\s{_INVISIBLE}]*[=+\\-@\t\r\uff1d\uff0b\uff0d\uff20]")


def spreadsheet_cell(value: str) -> str:
    """The cell with a single quote in front when a spreadsheet would take it for a formula (the spreadsheet
    then shows it as text); any other cell as it is."""
    if value[:1].isalnum():  # the common case (a name, a number, a hash, a time): no formula starts so
        return value
    return "'" + value if _FORMULA.match(value) else value


class SafeFormatter(logging.Formatter):
    """Every log record on one line, as the gateway wrote it: the message (with its arguments, which may carry
    what an agent sent or a source's error text) and any traceback are escaped with `terminal`, so a record can
    neither end early nor start a line that looks like another record. A traceback's line breaks show as
    `\\x0a`; the format's own fields (time, level, logger) are the gateway's."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = terminal(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        out = self.formatMessage(record)
        if record.exc_info:
            out += " | " + terminal(self.formatException(record.exc_info))
        if record.stack_info:
            out += " | " + terminal(self.formatStack(record.stack_info))
        return out


def cap(text: str | None, limit: int = USER_AGENT_MAX) -> str | None:
    """A header as the record keeps it: whole up to `limit` characters, else its start, its length and the
    start of its SHA-256, so that no record grows with what a client sends."""
    if not text:
        return None
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[:min(_KEPT, limit - 48)]}…[{len(text)} chars, sha256 {digest}]"
