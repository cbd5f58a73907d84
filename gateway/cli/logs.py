"""How the command logs: one format, in lines agent input cannot break or fake (SafeFormatter), set up alike in
the command's own process and, through uvicorn's logging config, in every `serve` worker."""

from __future__ import annotations

import copy
import logging
from typing import Any

from gateway.common.textsafe import SafeFormatter

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure() -> None:
    """The command's own process: INFO and up, to stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(LOG_FORMAT))  # agent input in a log line cannot break or fake lines
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("casbin").setLevel(logging.WARNING)  # it logs the whole model at INFO on every load


def uvicorn_config(level: str) -> dict[str, Any]:
    """uvicorn's logging plus the gateway's own loggers at --log-level. uvicorn applies it in every
    worker process too, which the parent's basicConfig does not reach (--workers N lost every line)."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["gateway"] = {"()": "gateway.common.textsafe.SafeFormatter", "fmt": LOG_FORMAT}
    config["formatters"]["default"]["()"] = "gateway.common.textsafe.uvicorn_formatter"  # uvicorn's lines too
    config["handlers"]["gateway"] = {"class": "logging.StreamHandler", "formatter": "gateway",
                                     "stream": "ext://sys.stderr"}
    config["root"] = {"handlers": ["gateway"], "level": level.upper()}
    config["loggers"]["casbin"] = {"level": "WARNING"}  # it logs the whole model at INFO on every load
    return config
