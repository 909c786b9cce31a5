"""Hugging Face glue: the Explainer, tokens, targets, baselines, causal generation."""
