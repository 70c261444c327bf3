"""Memory planning: will this configuration fit the device, before any model is loaded (see estimate.py)."""
