"""Profiles: YAML with file:line locations, the schema and its types, the search path, `extends`."""
