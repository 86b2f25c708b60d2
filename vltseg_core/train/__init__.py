"""Training: losses, Hungarian matcher, optimiser recipe, frozen-backbone feature cache, DDP trainer."""
