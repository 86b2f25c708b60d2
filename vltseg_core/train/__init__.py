"""Training: losses, Hungarian matcher, optimiser recipe, frozen-backbone feature cache, LoRA adapters, DDP trainer."""
