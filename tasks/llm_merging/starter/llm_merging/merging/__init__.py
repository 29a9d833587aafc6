"""Merge methods: one `Merges` subclass per file; register each in pyproject.toml."""
