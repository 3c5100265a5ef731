"""Evaluation: how good a trained model is (evaluate), and which architecture to use
(compare, with inference speed)."""
