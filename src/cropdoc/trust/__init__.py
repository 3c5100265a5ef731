"""Trust: calibrated confidence, "not sure", and "this is not a photo this model knows"."""
