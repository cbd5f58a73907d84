"""The agentgate command: `main` is the console script's entry point (`gateway.cli:main`)."""

from gateway.cli.main import LOG_FORMAT, _parser, main

__all__ = ["LOG_FORMAT", "_parser", "main"]
