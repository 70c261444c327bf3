"""Thin Prefect task wrappers around the stage functions: retries, persisted results, artifacts. No logic here.

Installed as `sftjudge.tasks` (the folder stays top-level, beside flows/ and deployments/).
"""
