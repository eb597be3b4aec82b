"""Several nodes of one deployment: each node's `dsv4serve up`, and the link between head and workers."""
