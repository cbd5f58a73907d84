"""Who is calling: JWT verification, keys, and what a token may reach."""
