"""Who is calling: JWT verification, keys (tokens.py), and whether the configured secret is exposed (exposure.py).

Import from here: ``from gateway.auth import Agent, Authenticator``.
"""

from gateway.auth.tokens import Agent, Authenticator

__all__ = ["Agent", "Authenticator"]
