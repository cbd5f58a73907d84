"""Connectors turn a validated query into rows. They know nothing of agents, policy or audit."""
