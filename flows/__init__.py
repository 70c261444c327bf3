"""Prefect flows: bodies that read as a table of contents, one call per stage. Installed as `sftjudge.flows`."""
