"""Training-data influence: which training examples most raised (proponents) or lowered
(opponents) a prediction. captum-compatible TracIn classes, over per-example gradients from the
native ``per_example_linear_grad`` op, and FAISS search."""

from saliency_fast.influence.search import InnerProductIndex
from saliency_fast.influence.tracin import KMostInfluentialResults, TracInCP, TracInCPFast, TracInCPFastRandProj

__all__ = ["InnerProductIndex", "KMostInfluentialResults", "TracInCP", "TracInCPFast", "TracInCPFastRandProj"]
