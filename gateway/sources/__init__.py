"""The data sources named in agentgate.toml, opened and checked against the catalog."""
