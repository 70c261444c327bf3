"""`sftjudge export`: a run's chosen checkpoint as a folder that serving tools load as is (see merge.py)."""
