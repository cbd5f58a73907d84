"""The security reviewers' web page at /admin/: server-rendered HTML over the one read path."""
