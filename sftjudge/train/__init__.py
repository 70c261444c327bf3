"""Stage 2, sft: supervised fine-tuning (LoRA or full) with train and validation loss after every epoch.

stage.py is the stage (out-of-memory fallback, sft.json, plot); loop.py the training loop; checkpoints.py the
resumable epoch checkpoints; batching.py batches and losses; distributed.py and launch.py several processes.
"""
