"""sftjudge: fine-tune a small open-weight model on your instruction data, judge it locally, promote or roll back.

The package is the pure library (no Prefect); tasks/ and flows/ orchestrate it.
"""

__version__ = "0.1.0"
