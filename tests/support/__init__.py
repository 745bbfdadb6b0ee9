"""Helpers the tests share: paths, databases, the CLI as a subprocess, legacy data."""
