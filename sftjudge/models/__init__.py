"""Where models come from (embedded.py: packaged GGUF, local dirs, hub ids; tiny.py: the test model), how they
load (loading.py), their chat templates (chat.py) and fingerprints (fingerprint.py)."""
