"""The policy files: loading, decisions (Casbin), the catalog, row filters, budget limits. No store."""
