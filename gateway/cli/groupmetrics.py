"""`serve --workers N`: the private directory where the worker group keeps its metrics (prometheus-client's
multiprocess mode), and the environment variables that name it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

METRICS_DIR_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
METRICS_DIR_PREFIX = "agentgate-metrics-"


def forget_inherited() -> None:
    """Where metrics are kept is serve's to say (group_metrics), before prometheus-client is imported: a directory
    inherited from the environment may hold another run's numbers."""
    for name in METRICS_DIR_VARIABLES:
        os.environ.pop(name, None)


@contextlib.contextmanager
def group_metrics() -> Iterator[None]:
    """--workers N: a private directory where every worker keeps its metrics and from which a scrape adds up the
    whole group's (prometheus-client's multiprocess mode). Made empty before the workers start (they inherit
    $PROMETHEUS_MULTIPROC_DIR), removed once they have stopped, so no earlier run's numbers are ever added in;
    those a killed serve left behind go at the next start."""
    import shutil
    import tempfile

    for stale in Path(tempfile.gettempdir()).glob(f"{METRICS_DIR_PREFIX}*"):
        if not _alive(stale / "serve.pid"):
            shutil.rmtree(stale, ignore_errors=True)
    folder = tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX)  # 0700, ours alone
    (Path(folder) / "serve.pid").write_text(str(os.getpid()))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid_file: Path) -> bool:
    """Whether the serve that wrote pid_file may still run: only a directory of ours whose serve is gone is not
    (one without its pid yet is a serve starting)."""
    try:
        if pid_file.parent.stat().st_uid != os.getuid():
            return True
        os.kill(int(pid_file.read_text()), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return True
    return True
