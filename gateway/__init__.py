"""agentgate: a data-access gateway for AI agents."""

__version__ = "0.1.0"
