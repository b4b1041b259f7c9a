"""Predictions: an exported model (with the class names and framing it carries) scores any dataset spec,
one row per image, written as CSV (and a Kaggle submission for a Kaggle-layout input)."""
