"""Training: optimisers and LR schedules (``optim``, ``schedule``) and PyTorch's own distributed
stack applied from outside the model (``parallel``: FSDP2 / DDP, activation checkpointing,
autocast).  MM1.5 §3–4 (recipe)."""
