"""The client's two loops and what bounds them: waiting for a person's approval, and reading page after page.

Each is a small state object both clients drive (one sleeps with time.sleep, the other with asyncio.sleep), so
the rules are written once. Every poll of an approval is a request the gateway records and counts against the
agent's budget: polls start at `poll_interval` and slow down to at most MAX_POLL_INTERVAL apart."""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.client.answers import Page
from gateway.client.errors import AgentgateError, ApprovalPending, ApprovalTimeout, BudgetExceeded, ReadLimitReached

MIN_POLL_INTERVAL = 0.1
MAX_POLL_INTERVAL = 15.0
MAX_WAIT = 24 * 3600.0  # longer than any approval's TTL is worth waiting for
SERVER_DEFAULT_LIMIT = 100  # the rows a query without `limit` asks for (SPEC: limit defaults to 100)


class ApprovalWait:
    """A bounded wait: `seconds` in all, polls `poll_interval` apart at first, each 1.5 times the last."""

    def __init__(self, seconds: float, poll_interval: float, clock: Callable[[], float] = time.monotonic):
        if not 0 < seconds <= MAX_WAIT:
            raise ValueError(f"wait_for_approval must be more than 0 and at most {MAX_WAIT:.0f} seconds")
        if not MIN_POLL_INTERVAL <= poll_interval <= MAX_POLL_INTERVAL:
            raise ValueError(f"poll_interval must be between {MIN_POLL_INTERVAL} and {MAX_POLL_INTERVAL} seconds")
        self._clock, self._seconds = clock, seconds
        self._deadline = clock() + seconds
        self._interval = poll_interval

    def pause(self, answer: AgentgateError) -> float:
        """The seconds to wait before asking again after `answer`; raises when there is no asking again: the
        wait is over (ApprovalTimeout), or the answer is a refusal that waiting does not cure."""
        left = self._deadline - self._clock()
        if isinstance(answer, ApprovalPending):
            if left <= 0:
                raise ApprovalTimeout(
                    f"approval {answer.approval_id} still pending after {self._seconds:g} s: {answer.message}",
                    approval_id=answer.approval_id, status=answer.status, code=answer.code,
                    request_id=answer.request_id, body=answer.body) from answer
            delay, self._interval = self._interval, min(self._interval * 1.5, MAX_POLL_INTERVAL)
            return min(delay, left)
        # A budget spent by the polls themselves: wait for it to come back if it does within the wait.
        if isinstance(answer, BudgetExceeded) and answer.retry_after is not None and answer.retry_after < left:
            return max(answer.retry_after, MIN_POLL_INTERVAL)
        raise answer


class Paging:
    """query_all's guard: at most `max_pages` pages and `max_rows` rows. The last page asks for no more rows than
    are left (a cursor is bound to the columns, filters and order, not to the limit), so no row is skipped:
    ReadLimitReached carries the cursor of the first row not read."""

    def __init__(self, limit: int | None, max_pages: int, max_rows: int):
        if max_pages < 1 or max_rows < 1:
            raise ValueError("max_pages and max_rows must be at least 1")
        self._limit, self._max_pages, self._max_rows = limit, max_pages, max_rows
        self.pages = self.rows = 0

    def next_limit(self) -> int | None:
        left = self._max_rows - self.rows
        asked = self._limit if self._limit is not None else SERVER_DEFAULT_LIMIT
        return left if left < asked else self._limit

    def cursor_after(self, page: Page) -> str | None:
        """The cursor to read on with; None when the read is complete; ReadLimitReached when rows remain."""
        self.pages += 1
        self.rows += len(page.rows)
        if page.next_cursor is None:
            return None
        if self.pages >= self._max_pages or self.rows >= self._max_rows:
            raise ReadLimitReached(f"stopped after {self.pages} pages and {self.rows} rows (max_pages "
                                   f"{self._max_pages}, max_rows {self._max_rows}); more rows remain",
                                   next_cursor=page.next_cursor, pages=self.pages, rows=self.rows)
        return page.next_cursor
