"""SQL mode: the statement an agent writes, checked and fenced by its row filter."""
