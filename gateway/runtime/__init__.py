"""The process: connection and file capacity, the parent watch, waiting for the store at start."""
