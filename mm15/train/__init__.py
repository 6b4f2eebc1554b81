"""Training: optimisers and LR schedules (``optim``, ``schedule``) and PyTorch's own distributed
stack applied from outside the model (``parallel``: FSDP2 / DDP, activation checkpointing,
autocast).  SPEC §4 (recipe) and §6 (scale)."""
