"""The one read path: the pipeline every transport calls, its operations and their answers."""
