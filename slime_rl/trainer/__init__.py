"""Megatron-core trainer: one `MegatronTrainer` per rank (see `trainer.py`). Megatron is imported lazily."""
