"""Photo-quality checks before the model: a verdict ``retake`` with the reason."""
