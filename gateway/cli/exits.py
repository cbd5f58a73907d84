"""The `agentgate` command's exit codes, the same for every command.

0 success, 1 a check found a fault, 2 bad arguments or a missing or unreadable config file (always with a
one-line reason); `serve` exits 3 when it cannot start (a store it cannot reach, within --wait-for-store if
given: gateway/runtime/storewait.py owns that code).
"""

EXIT_OK, EXIT_FAULT, EXIT_USAGE = 0, 1, 2
