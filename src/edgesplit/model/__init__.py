"""The model: fx graph and cut points, partition strings, zoo, checkpoints, datasets, training."""
