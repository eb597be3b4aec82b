"""One deployment over several nodes: each node's `dsv4serve up`, and the line between the head and its
workers (control.py); the options and the plan's per-node text for the CLI (options.py, show.py)."""
