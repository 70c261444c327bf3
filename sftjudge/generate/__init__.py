"""Stage 3, generate: the fine-tuned model answers the test split (and the regression suite).

stage.py is the stage; backends.py the transformers and vLLM generators behind one protocol; loading.py loads a
base model or checkpoint onto a backend (refusing a chat-template mismatch); cache.py the resumable, keyed answer
files and the base-model baselines shared across runs.
"""
