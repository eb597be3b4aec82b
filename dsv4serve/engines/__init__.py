"""Engines behind one interface (base.py): each owns its argv, flags, version, log and cache facts."""
