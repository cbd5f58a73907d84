"""The gateway's own database: tables, engines, the store file's identity, the change feed."""
