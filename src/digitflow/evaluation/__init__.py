"""Evaluation: a classifier's metrics, adversarial attacks, generative metrics, plots, the promotion rule."""
