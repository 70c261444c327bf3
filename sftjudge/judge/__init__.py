"""Stage 4, judge: a local LLM scores the answers against the references, plus cheap metrics.

stage.py is the stage; spec.py loads judge definitions (judges are data) and derives a judge's identity;
model.py loads the judge model once; logprob.py and text.py are the two scoring modes; cache.py the per-run
judgment cache; pairwise.py, health.py, metrics.py, suite.py (regression suite) and calibrate.py the rest.
"""
