"""How the command logs: in the form [log] format names (common/logformat.py: `text`, lines agent input cannot
break or fake, or `json`, one object a line for a collector), set up alike in the command's own process and,
through uvicorn's logging config, in every `serve` worker, uvicorn's own lines included."""

from __future__ import annotations

import copy
import logging
from typing import Any

from gateway.common.logformat import JsonFormatter, TextFormatter, say
from gateway.config import LogSettings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(log: LogSettings | None = None, level: str = "info") -> None:
    """The command's own process: `level` and up, to stderr, in [log] format (text until the config is read)."""
    logging.getLogger("casbin").setLevel(logging.WARNING)  # it logs the whole model at INFO on every load
    root = logging.getLogger()
    # As logging.basicConfig: a host that set up logging itself (a test run, a program calling main()) keeps its
    # own. Ours, set up earlier in this process (text until the config is read), is replaced.
    if any(h not in _installed for h in root.handlers):
        return
    handler = logging.StreamHandler()
    # Agent input in a log line can neither break nor fake lines, in either form.
    handler.setFormatter(JsonFormatter() if log is not None and log.format == "json" else TextFormatter(LOG_FORMAT))
    for old in _installed:
        root.removeHandler(old)
    root.addHandler(handler)
    _installed[:] = [handler]
    root.setLevel(level.upper())


__all__ = ["LOG_FORMAT", "configure", "say", "uvicorn_config"]
_installed: list[logging.Handler] = []  # the handler configure() put on the root logger, if any


def uvicorn_config(level: str, log: LogSettings | None = None) -> dict[str, Any]:
    """uvicorn's logging plus the gateway's own loggers at `level`, in [log] format. uvicorn applies it in every
    worker process too, which the parent's basicConfig does not reach (--workers N lost every line)."""
    from uvicorn.config import LOGGING_CONFIG

    log = log or LogSettings()
    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    if log.format == "json":  # uvicorn's own lines (its start, its errors) one JSON object each too
        config["formatters"] = {name: {"()": "gateway.common.logformat.JsonFormatter"}
                                for name in ("gateway", "default", "access")}
    else:
        # uvicorn's own lines (its start, its errors) in the gateway's line too: one shape for a collector to parse.
        config["formatters"] = {name: {"()": "gateway.common.logformat.TextFormatter", "fmt": LOG_FORMAT}
                                for name in ("gateway", "default", "access")}
    config["handlers"]["gateway"] = {"class": "logging.StreamHandler", "formatter": "gateway",
                                     "stream": "ext://sys.stderr"}
    config["root"] = {"handlers": ["gateway"], "level": level.upper()}
    config["loggers"]["casbin"] = {"level": "WARNING"}  # it logs the whole model at INFO on every load
    # On (INFO, the level its lines are written at) with [log] access at level info or debug; else off (WARNING).
    # Set either way: it is off by default (transports/accesslog.py), in a worker too.
    on = log.access and logging.getLevelName(level.upper()) <= logging.INFO
    config["loggers"]["agentgate.access"] = {"level": "INFO" if on else "WARNING"}
    return config
