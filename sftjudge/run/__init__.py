"""One run, one directory: its file names (files.py), manifest (directory.py), crash-safe writes (io.py), the
stage wrapper every stage uses (stage.py), the run registry and champion (registry.py), and summaries."""
