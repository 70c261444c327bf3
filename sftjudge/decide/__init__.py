"""Stage 5, decide: promote, hold or roll back against the champion, with reasons; the report.

stage.py reads the run and the champion and records the decision; rules.py is the pure decision over the records
in records.py; consistency.py cross-checks the judge against the reference metrics; advice.py reads curves and the
weakest dimension into next steps; report.py writes the report and plots.
"""
