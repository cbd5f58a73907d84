"""agentgate.toml: the settings, their defaults and their checks."""
