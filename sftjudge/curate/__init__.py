"""Stage 1, curate: load, validate, scrub, deduplicate, length-filter and split the data; books always balance.

stage.py is the stage (run directory, cache); pipeline.py chains the steps; each step is a pure function over rows
returning kept rows and dropped rows with reasons (steps.py, pii.py, dedup.py, lengths.py, split.py,
contamination.py); rows.py and sources.py read every input format into one row shape.
"""
