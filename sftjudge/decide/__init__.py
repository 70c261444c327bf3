"""Stage 5, decide: promote, hold or roll back against the champion, with reasons; the report.

stage.py reads the run and the champion and records the decision; rules.py is the pure decision; report.py the
report and plots.
"""
