"""The ways in: HTTP (data, admin, ops), MCP, the review page. They parse, call the core, answer."""
