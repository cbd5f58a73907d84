"""Records in doubt and the corrections owed: what keeps the trail truthful about requests answered 503 while
their record's write was given up (the store may have committed it all the same)."""

from __future__ import annotations

import logging
import re
from dataclasses import replace

from gateway.audit.record import AuditRecord
from gateway.common.clock import now

log = logging.getLogger("agentgate.audit")

# Records in doubt (below) kept for checking, at most; beyond, the oldest are given up (and logged).
DOUBT_MAX = 10_000
# A PostgreSQL write abandoned at its deadline is checked this long after it: past any error in the measure of
# the server's clock (the append refuses to insert once the server's clock passes the deadline).
SETTLE_SECONDS = 1.0
# Owed corrections written ahead of one group, at most: after an outage that left many, each write stays small
# (one that misses its deadline would hand them back, and the next would carry them all again).
OWED_PER_GROUP = 64

# How a correction's reason begins, the corrected record's id right after it (usage counts by it).
CORRECTION_PREFIX = "answered 503 (audit write timed out): record "
CORRECTED_ID = re.compile(re.escape(CORRECTION_PREFIX) + r"([0-9]{1,19}) ")


def correction(stored: AuditRecord) -> AuditRecord:
    """The record of what a request was answered when its own record was stored after its answer left: 503, no
    data. Same request (request_id, agent, dataset, query...); `reason` names the record it corrects."""
    return replace(stored, time=now(), decision="error", status=503, rows=None, bytes=None, response_sha256=None,
                   reason=f"{CORRECTION_PREFIX}{stored.id} of this request was stored "
                          "after its answer left and served nothing", id=0, prev_hash="", hash="")


class Unsettled:
    """Audit records whose requests were answered 503 while their write was abandoned after being sent (its
    deadline passed, the connection was lost): the store may hold them all the same, claiming an answer that
    never left. Each is checked under the chain's lock at a later write (on PostgreSQL once SETTLE_SECONDS have
    passed: no statement held up on the way can insert by then), and one found stored is followed by its
    correction (correction()), so the trail says what the request was really answered. Corrections are owed
    until written, and written first in the next group; one whose own write is in doubt is checked alike.

    The writers say what they send (`sending`) and what came of it (`stored`, `not_stored`); the trail says
    which waiters were answered 503 when a write is given up (`abandon`). A record in doubt is kept as its id
    and hash (its content, if stored, is read back from the store): a long silence costs little memory."""

    def __init__(self) -> None:
        # (id, hash) of each record in doubt as linked and sent; and, for a correction, the correction itself
        self.doubts: list[tuple[int, str, AuditRecord | None]] = []
        self.owed: list[AuditRecord] = []  # corrections to write, ahead of the next group
        self.settle_after = 0.0  # time.time() before which a PostgreSQL check would not be conclusive
        self._sending: tuple[list[AuditRecord], int] | None = None  # a group sent, its first n the owed ones

    def sending(self, group: list[AuditRecord], corrections: int) -> None:
        self._sending = (group, corrections)

    def stored(self) -> int:
        """The group sent is committed; returns how many owed corrections led it (no longer owed)."""
        corrections = self._sending[1] if self._sending is not None else 0
        del self.owed[:corrections]
        self._sending = None
        return corrections

    def not_stored(self) -> None:
        self._sending = None

    def abandon(self, answered: list[bool], deadline: float) -> None:
        """The group sent was given up, whether or not the store committed it: its owed corrections, and the
        records whose waiters were `answered` 503, are in doubt. `deadline`: the group's, time.time()."""
        if self._sending is None:
            return
        group, corrections = self._sending
        self._sending = None
        del self.owed[:corrections]
        self.doubts.extend((rec.id, rec.hash, rec) for rec in group[:corrections])
        self.doubts.extend((rec.id, rec.hash, None) for rec, told in zip(group[corrections:], answered, strict=True)
                           if told)
        if len(self.doubts) > DOUBT_MAX:
            lost = self.doubts[:-DOUBT_MAX]
            del self.doubts[:-DOUBT_MAX]
            log.error("%d audit record(s) answered 503 after a write given up are no longer checked (ids %d to "
                      "%d): the trail may hold them as they would have been answered", len(lost), lost[0][0],
                      lost[-1][0])
        self.settle_after = max(self.settle_after, deadline + SETTLE_SECONDS)

    def owe(self, correction: AuditRecord) -> None:
        self.owed.append(correction)

    def doubted_ids(self) -> list[int]:
        return [rid for rid, _, _ in self.doubts]

    def settle(self, found: list[AuditRecord]) -> None:
        """`found`: the records the store holds at the ids in doubt (read under the chain's lock)."""
        there = {rec.id: rec for rec in found}
        for rid, digest, owed in self.doubts:
            stored = there.get(rid)
            if stored is not None and stored.hash != digest:
                stored = None  # another writer's record took that id: ours was not stored
            if owed is not None and stored is None:
                self.owed.append(replace(owed, id=0, prev_hash="", hash=""))  # to be written again
            elif owed is None and stored is not None:
                log.warning("audit record %d was stored after its request was answered 503 (its write was given "
                            "up); a correction record follows it", rid)
                self.owed.append(correction(stored))
        self.doubts.clear()
