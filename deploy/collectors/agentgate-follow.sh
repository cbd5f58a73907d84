#!/bin/sh
# agentgate's audit trail for a log collector (Vector's `exec` source, Fluent Bit's `exec` input): each record
# as one JSON line on stdout, as it commits, resumed after the last record handed on.
#
# It runs `agentgate audit export --format jsonl --follow --after ID`, ID read from the state file, and writes
# the id of every record it has handed on to the state file (after the line left, never before): a restart,
# of this script, the collector or the machine, goes on after it. A missing or empty state file starts from
# the beginning of the trail. See README.md beside it.
#
# Environment: AGENTGATE_CONFIG (default /etc/agentgate/agentgate.toml), AGENTGATE_FOLLOW_STATE (default
# /var/lib/agentgate-collector/last-id), AGENTGATE_BIN (default agentgate).
set -u

config="${AGENTGATE_CONFIG:-/etc/agentgate/agentgate.toml}"
state="${AGENTGATE_FOLLOW_STATE:-/var/lib/agentgate-collector/last-id}"
agentgate="${AGENTGATE_BIN:-agentgate}"

mkdir -p "$(dirname "$state")" || exit 1
after=$(cat "$state" 2>/dev/null || true)
case "$after" in
    '' | *[!0-9]*) after=0 ;;
esac

fifo="$(mktemp -u "${TMPDIR:-/tmp}/agentgate-follow.XXXXXX")"
mkfifo -m 600 "$fifo" || exit 1
trap 'rm -f "$fifo"' EXIT

"$agentgate" audit export --format jsonl --follow --after "$after" --config "$config" >"$fifo" &
follower=$!
# Each line passed on, flushed, then its id kept. A record's line starts {"id":N, (the id is the first field).
awk -v state="$state" '
    { print; fflush() }
    match($0, /^\{"id":[0-9]+,/) { print substr($0, 7, RLENGTH - 7) > state; close(state) }
' <"$fifo" &
keeper=$!

# Stopped (SIGTERM, SIGINT, SIGHUP): stop the follower, which exits 0; awk passes on what is left and ends.
trap 'kill -TERM "$follower" 2>/dev/null' TERM INT HUP
while kill -0 "$keeper" 2>/dev/null; do
    wait "$keeper"
    status=$?
done
wait "$follower"
code=$?  # the follower's failure (a store it cannot reach at start: 1) first, else how the passing on ended
[ "$code" -eq 0 ] && code="${status:-0}"
exit "$code"
