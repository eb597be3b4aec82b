"""`dsv4serve bench`: load a running server, report its figures, keep them (SQLite) and compare runs."""
