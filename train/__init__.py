"""Training, evaluation and data preparation for the accessd Siamese model."""
