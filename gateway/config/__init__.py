"""agentgate.toml: the settings, their defaults and their checks.

``settings`` holds the typed settings, ``loader`` finds and reads the file into them (``reader`` helps it).
Import from here: ``from gateway.config import Settings, load_settings``.
"""

from gateway.config.loader import CONFIG_KEYS, find_config, load_settings
from gateway.config.settings import (
    ApprovalSettings,
    AuditSettings,
    AuthSettings,
    CostSettings,
    LimitSettings,
    LogSettings,
    PolicySettings,
    Secret,
    ServerSettings,
    Settings,
    SourceSettings,
    SqlModeSettings,
    StoreSettings,
)

__all__ = [
    "CONFIG_KEYS",
    "ApprovalSettings",
    "AuditSettings",
    "AuthSettings",
    "CostSettings",
    "LimitSettings",
    "LogSettings",
    "PolicySettings",
    "Secret",
    "ServerSettings",
    "Settings",
    "SourceSettings",
    "SqlModeSettings",
    "StoreSettings",
    "find_config",
    "load_settings",
]
