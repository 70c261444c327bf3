"""Stage 2, sft: supervised fine-tuning (LoRA or full) with train and validation loss after every epoch.

stage.py is the stage (out-of-memory fallback, sft.json, plot); loop.py the epochs around the trainer (losses,
early stopping, resume); engine.py what TRL's SFTTrainer is given (loss, sampler, arguments); precision.py the
base weights' dtype and quantisation; checkpoints.py the resumable epoch checkpoints; batching.py batches and
losses; distributed.py and launch.py several processes.
"""
