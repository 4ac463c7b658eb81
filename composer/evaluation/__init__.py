"""Evaluating composed models: the lm-evaluation-harness adapter and the project's own metrics."""
