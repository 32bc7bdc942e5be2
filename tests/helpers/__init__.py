"""Shared test helpers: tiny models, emoji shards, process launchers (the fixtures are in tests/conftest.py)."""
