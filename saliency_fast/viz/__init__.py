"""Views of an :class:`~saliency_fast.result.AttributionResult`: console (rich), HTML, PNG (matplotlib)."""
