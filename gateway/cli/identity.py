"""Who runs the command: the name its acts are recorded under (`cli:USER`), and the operating-system account
recorded beside an approver's self-declared name."""

from __future__ import annotations

import getpass
import os


def user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())


def os_user() -> str:
    """The account this process runs as, from its user id: not from $USER or $LOGNAME, which whoever runs the
    command sets. Recorded beside an approver's self-declared name."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, OSError):
        return f"uid {os.getuid()}"
