"""Thin Prefect task wrappers around sftjudge.stages: retries, persisted results, artifacts. No logic here."""
