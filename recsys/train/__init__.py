"""Training: losses, metrics, sharding, optimizers, checkpoints and the trainer."""
