"""Whole-input tasks: what the model reads for each example and which scalar is attributed.

Every task turns inputs into *units* (token sequences the model reads) and, after one
prediction pass, into *rows* (one attributed scalar each, read from one unit). A row's score is
a differentiable function of the unit's word embeddings, so any method attributes it:

- ``classify``: the target class's logit / prob / logprob / loss (``*ForSequenceClassification``);
- ``tagging``: one row per output position, the tag's score there (``*ForTokenClassification``);
- ``multiple_choice``: one unit per (prompt, choice) pair; a row is a choice's score, its
  softmax over the choices taking the other choices' logits as constants;
- ``similarity``: cosine similarity of the pooled text embedding to a reference text's;
- ``zero-shot``: similarity of the pooled text embedding to label prompts (see
  :class:`ZeroShotTask` for the margin it attributes by default).

The Explainer batches rows (any mix of lengths) and calls :meth:`Task.score` through
``additional_forward_args``, so per-row tensors follow the method's own input expansion.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
import torch.nn.functional as F

from saliency_fast.hf import last_token, model_io, words
from saliency_fast.hf.batching import PaddedBatch
from saliency_fast.hf.targets import (CONTRAST_CHOICES, TARGET_CHOICES, class_labels, is_contrastive, resolve_class,
                                      score_from_logits)

TASK_CHOICES = ("auto", "classify", "tagging", "multiple_choice", "similarity", "zero-shot", "generate")


@dataclasses.dataclass
class Unit:
    """One token sequence the model reads, with what a result needs to show it."""

    example: int  # index of the input text / prompt it comes from
    input_ids: torch.Tensor  # long [S]
    token_type_ids: torch.Tensor | None
    tokens: list[str]
    word_ids: list[int | None]
    special: torch.Tensor  # bool [S]
    name: str | None = None  # e.g. the choice text of a multiple-choice pair


@dataclasses.dataclass
class Row:
    """One attributed scalar: ``index`` (class, label or choice) read at ``position`` of ``unit``."""

    unit: int
    index: int
    label: str
    position: int = 0
    extra: torch.Tensor | None = None  # per-row float constants (other choices' logits, reference embedding)


@dataclasses.dataclass
class Group:
    """Rows shown together in one result (they share the unit's tokens)."""

    unit: int
    rows: list[int]
    metadata: dict


class Task:
    """Base class: encoding, the model call and the score of one row per batch element."""

    name = ""
    score_choices: tuple[str, ...] = TARGET_CHOICES
    positional = False  # outputs have a sequence dim (tagging): the prediction pass crops them

    def __init__(self, explainer):
        self.explainer = explainer
        self.model = explainer.model
        self.tokenizer = explainer.tokenizer
        self.contrast: tuple[int, str] | None = None  # (index, label) of a contrastive score's competing class

    def set_contrast(self, contrast_targets, kind: str) -> None:
        """Check ``contrast_targets`` against the score ``kind``; the competing class of a contrastive
        score (classification only)."""
        if is_contrastive(kind) and contrast_targets is None:
            raise ValueError(f"score {kind!r} needs contrast_targets: the competing class (index or label)")
        if contrast_targets is not None and not is_contrastive(kind):
            raise ValueError(f"contrast_targets applies to the scores {CONTRAST_CHOICES}, not score={kind!r}")
        if contrast_targets is not None:
            raise ValueError(f"contrast_targets applies to task 'classify', not {self.name!r}")

    # -- inputs

    def encode(self, texts: list[str]) -> list[Unit]:
        encoding = self.tokenizer(texts)  # one call: fast tokenizers encode a batch in parallel
        return [self._unit(i, encoding, i, f"texts[{i}]" if len(texts) > 1 else "texts") for i in range(len(texts))]

    def _unit(self, example: int, encoding, index: int, what: str, name: str | None = None) -> Unit:
        """Unit from example ``index`` of the tokenizer's batch ``encoding`` (texts or text pairs)."""
        ids = torch.as_tensor(encoding["input_ids"][index], dtype=torch.long)
        model_io.check_length(int(ids.shape[0]), self.model, what=what)
        types = encoding.get("token_type_ids")
        types = None if types is None else torch.as_tensor(types[index], dtype=torch.long)
        special = model_io.special_mask(self.tokenizer, ids)
        if bool(special.all()):
            raise ValueError(f"{what} has no token to attribute besides special tokens")
        tokens = model_io.token_texts(self.tokenizer, ids)
        word_ids = words.word_ids(encoding, index, tokens, special.tolist())
        return Unit(example, ids, types, tokens, word_ids, special, name)

    # -- the model

    def run_model(self, inputs_embeds, attention_mask, token_type_ids=None, position_ids=None, **kwargs):
        return self.model(inputs_embeds=inputs_embeds, **self.model_kwargs(attention_mask, token_type_ids,
                                                                           position_ids, **kwargs))

    def model_kwargs(self, attention_mask, token_type_ids=None, position_ids=None, **kwargs) -> dict:
        """The model's keyword arguments besides ``inputs_embeds``."""
        kwargs["attention_mask"] = attention_mask
        if token_type_ids is not None and self.explainer.accepts("token_type_ids"):
            kwargs["token_type_ids"] = token_type_ids
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        return kwargs

    def outputs(self, inputs_embeds, attention_mask, token_type_ids=None, position_ids=None) -> torch.Tensor:
        """What predictions and scores are read from, one entry per batch element."""
        return self.run_model(inputs_embeds, attention_mask, token_type_ids, position_ids).logits

    def score(self, outputs, index, position, extra, kind: str) -> torch.Tensor:
        """One scalar per batch element, differentiable in ``outputs``."""
        return score_from_logits(outputs, index, kind)

    def attention_queries(self, batch: PaddedBatch, positions: torch.Tensor) -> torch.Tensor:
        """Weights over query positions ``[B, S]`` whose attention rows make the ``attention`` view:
        the first token for encoders (CLS), the last real token for decoders."""
        queries = torch.zeros(batch.attention_mask.shape, dtype=torch.float32, device=batch.attention_mask.device)
        for b, (offset, length) in enumerate(zip(batch.offsets, batch.lengths)):
            queries[b, offset + length - 1 if self.explainer.decoder_only else offset] = 1.0
        return queries

    # -- rows

    def plan(self, units: list[Unit], outputs: list[torch.Tensor], target) -> tuple[list[Row], list[Group]]:
        """Rows to attribute and how they group into results, from the prediction ``outputs``
        (one per unit) and the user's ``target`` (``None``: the prediction)."""
        raise NotImplementedError


class ClassifyTask(Task):
    """A decoder-only classifier's score is read at each row's last real token, from the attention
    mask (see :mod:`saliency_fast.hf.last_token`): any padding, and no pad id needed."""

    name = "classify"
    score_choices = TARGET_CHOICES + CONTRAST_CHOICES

    def set_contrast(self, contrast_targets, kind: str) -> None:
        if contrast_targets is None or not is_contrastive(kind):
            super().set_contrast(contrast_targets, kind)
            return
        labels = class_labels(self.model)
        index = resolve_class(contrast_targets, labels, name="contrast_targets")
        self.contrast = (index, labels[index])

    def score(self, outputs, index, position, extra, kind):
        if is_contrastive(kind):
            index = torch.stack([index, torch.full_like(index, self.contrast[0])], dim=-1)
        return score_from_logits(outputs, index, kind)

    def run_model(self, inputs_embeds, attention_mask, token_type_ids=None, position_ids=None, **kwargs):
        if not self.explainer.decoder_only:
            return super().run_model(inputs_embeds, attention_mask, token_type_ids, position_ids, **kwargs)
        # a decoder's body alone (hidden states, attentions): its own head would need a pad id
        return self.model.base_model(inputs_embeds=inputs_embeds, **self.model_kwargs(
            attention_mask, token_type_ids, position_ids, **kwargs))

    def outputs(self, inputs_embeds, attention_mask, token_type_ids=None, position_ids=None):
        if not self.explainer.decoder_only:
            return super().outputs(inputs_embeds, attention_mask, token_type_ids, position_ids)
        if last_token.has_score_head(self.model):
            hidden = self.run_model(inputs_embeds, attention_mask, token_type_ids, position_ids).last_hidden_state
            return last_token.pooled_logits(self.model, hidden, attention_mask)
        return last_token.logits_row_by_row(self.model, inputs_embeds, **self.model_kwargs(
            attention_mask, token_type_ids, position_ids))

    def plan(self, units, outputs, target):
        labels = class_labels(self.model)
        wanted = resolve_class(target, labels)
        rows, groups = [], []
        for u, logits in enumerate(outputs):
            probs = logits.float().softmax(-1)
            predicted = int(probs.argmax())
            index = predicted if wanted is None else wanted
            groups.append(Group(u, [len(rows)], {
                "prediction": labels[predicted],
                "label_probs": {label: float(p) for label, p in zip(labels, probs)},
            }))
            rows.append(Row(u, index, labels[index]))
        return rows, groups


class TaggingTask(Task):
    name = "tagging"
    positional = True

    def score(self, outputs, index, position, extra, kind):
        at = outputs[torch.arange(outputs.shape[0], device=outputs.device), position]
        return score_from_logits(at, index, kind)

    def attention_queries(self, batch, positions):
        queries = torch.zeros(batch.attention_mask.shape, dtype=torch.float32, device=batch.attention_mask.device)
        queries[torch.arange(queries.shape[0]), positions] = 1.0
        return queries

    def plan(self, units, outputs, target):
        labels = class_labels(self.model)
        wanted = resolve_class(target, labels)
        rows, groups = [], []
        for u, (unit, logits) in enumerate(zip(units, outputs)):
            predicted = logits.argmax(-1).tolist()
            group = Group(u, [], {"prediction": [labels[i] for i in predicted]})
            for position, token in enumerate(unit.tokens):
                if self.explainer.exclude_special_tokens and bool(unit.special[position]):
                    continue
                index = predicted[position] if wanted is None else wanted
                group.rows.append(len(rows))
                rows.append(Row(u, index, f"{token} [{position}]: {labels[index]}", position=position))
            groups.append(group)
        return rows, groups


class MultipleChoiceTask(Task):
    """``choices``: one list for every prompt, or one list per prompt. ``target``: ``None`` (the
    predicted choice), a choice index or text, or ``"all"`` (one result per choice)."""

    name = "multiple_choice"

    def __init__(self, explainer, choices=None):
        super().__init__(explainer)
        self.choices = choices

    def encode(self, texts):
        per_prompt = _choices_per_prompt(self.choices, len(texts))
        units = []
        for i, (prompt, choices) in enumerate(zip(texts, per_prompt)):
            encoding = self.tokenizer([prompt] * len(choices), choices)
            for j, choice in enumerate(choices):
                what = f"prompt {i} with choices[{j}]" if len(texts) > 1 else f"prompt with choices[{j}]"
                units.append(self._unit(i, encoding, j, what, name=choice))
        return units

    def run_model(self, inputs_embeds, attention_mask, token_type_ids=None, position_ids=None, **kwargs):
        # The head scores [batch, n_choices, seq] inputs; each unit goes in as a question with one choice.
        one_choice = [None if t is None else t.unsqueeze(1) for t in (inputs_embeds, attention_mask, token_type_ids,
                                                                      position_ids)]
        return super().run_model(*one_choice, **kwargs)

    def outputs(self, inputs_embeds, attention_mask, token_type_ids=None, position_ids=None):
        return super().outputs(inputs_embeds, attention_mask, token_type_ids, position_ids)[:, 0]

    def score(self, outputs, index, position, extra, kind):
        if kind == "logit":
            return outputs
        slots = torch.arange(extra.shape[-1], device=extra.device)
        logits = torch.where(slots == index.unsqueeze(-1), outputs.unsqueeze(-1).to(extra.dtype), extra)
        return score_from_logits(logits, index, kind)

    def plan(self, units, outputs, target):
        questions: dict[int, list[int]] = {}
        for u, unit in enumerate(units):
            questions.setdefault(unit.example, []).append(u)
        rows, groups = [], []
        for example, members in questions.items():
            logits = torch.stack([outputs[u].float() for u in members])
            probs = logits.softmax(-1)
            names = [units[u].name for u in members]
            predicted = int(probs.argmax())
            if isinstance(target, str) and target == "all":
                chosen = list(range(len(members)))
            else:
                wanted = resolve_class(target, names, what="choice")
                chosen = [predicted if wanted is None else wanted]
            for slot in chosen:
                u = members[slot]
                groups.append(Group(u, [len(rows)], {
                    "prediction": names[predicted], "choice_index": slot, "example": example,
                    "choice_probs": {name: float(p) for name, p in zip(names, probs)},
                }))
                rows.append(Row(u, slot, names[slot], extra=logits))
        return rows, groups


def _choices_per_prompt(choices, n_prompts: int) -> list[list[str]]:
    def check(options, name):
        if not isinstance(options, (list, tuple)) or len(options) < 2:
            raise ValueError(f"{name} must be a list of at least 2 choice strings, got {options!r}")
        for j, option in enumerate(options):
            if not isinstance(option, str) or not option.strip():
                raise ValueError(f"{name}[{j}] must be a non-empty string, got {option!r}")
        return list(options)

    if choices is None:
        raise ValueError("choices is required for a multiple-choice model: attribute(prompt, choices=[...])")
    if isinstance(choices, (list, tuple)) and choices and all(isinstance(c, (list, tuple)) for c in choices):
        if len(choices) != n_prompts:
            raise ValueError(
                f"choices has {len(choices)} lists but there are {n_prompts} prompts; expected one per prompt"
            )
        return [check(c, f"choices[{i}]") for i, c in enumerate(choices)]
    return [check(choices, "choices")] * n_prompts


class _PooledTask(Task):
    """Tasks over a sentence embedding: the encoder's output pooled over the real tokens."""

    positional = False

    def outputs(self, inputs_embeds, attention_mask, token_type_ids=None, position_ids=None):
        hidden = self.run_model(inputs_embeds, attention_mask, token_type_ids, position_ids).last_hidden_state
        return pool(hidden, attention_mask, self.explainer.pooling)

    def attention_queries(self, batch, positions):
        if self.explainer.pooling == "cls":
            return super().attention_queries(batch, positions)
        mask = batch.attention_mask.float()
        return mask / mask.sum(-1, keepdim=True)

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Pooled embeddings ``[n, hidden]`` of ``texts``, without gradients."""
        units = Task.encode(self, texts)
        return torch.stack(self.explainer.predict(self, units))


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """Sentence embedding: mean over real tokens (sentence-transformers' mean pooling) or the first token."""
    if how == "cls":
        return hidden[:, 0]
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class SimilarityTask(_PooledTask):
    """Target: cosine similarity of each text's embedding to ``reference`` (one text, or one per text)."""

    name = "similarity"
    score_choices = ("cosine",)

    def __init__(self, explainer, reference=None):
        super().__init__(explainer)
        self.reference = explainer.reference if reference is None else reference

    def score(self, outputs, index, position, extra, kind):
        return F.cosine_similarity(outputs.float(), extra.float(), dim=-1)

    def plan(self, units, outputs, target):
        if target is not None:
            raise ValueError(f"target must be None for similarity (the score is the cosine similarity), got {target!r}")
        references = _references(self.reference, len({u.example for u in units}))
        embedded = self.embed(references)
        rows, groups = [], []
        for u, (unit, pooled) in enumerate(zip(units, outputs)):
            reference = embedded[unit.example]
            similarity = float(F.cosine_similarity(pooled.float(), reference.float(), dim=0))
            groups.append(Group(u, [len(rows)], {"reference": references[unit.example], "similarity": similarity}))
            rows.append(Row(u, 0, "similarity", extra=reference))
        return rows, groups


def _references(reference, n_texts: int) -> list[str]:
    if reference is None:
        raise ValueError(
            "reference is required for similarity: attribute(text, reference='...') or Explainer(reference=...)"
        )
    if isinstance(reference, str):
        reference = [reference] * n_texts
    texts, _ = model_io.check_texts(reference, name="reference")
    if len(texts) != n_texts:
        raise ValueError(
            f"reference has {len(texts)} texts but there are {n_texts} texts; expected one or one per text"
        )
    return texts


class ZeroShotTask(_PooledTask):
    """Zero-shot classification with a sentence-embedding model.

    Each label is embedded once as ``label_template.format(label)``; a text's score for a label
    is the cosine similarity of their embeddings, and the prediction is the most similar label.
    The attributed score defaults to the *margin*: the target label's similarity minus the mean
    similarity to the other labels. Raw similarity to one label prompt (``score="cosine"``) also
    rewards words that make the text resemble any label prompt (its topic: "movie", "this"):
    on all-MiniLM-L6-v2 and "This movie was incredibly bad, I hated every second of it." its
    IG ranks "this"/"movie" next to "bad", while the margin ranks "bad" and "hated" first for
    every template we tried. With two labels the margin is cos(pred) - cos(other).
    """

    name = "zero-shot"
    score_choices = ("margin", "cosine")

    def __init__(self, explainer, labels=None):
        super().__init__(explainer)
        self.labels = check_labels(explainer.labels if labels is None else labels)
        self.label_embeddings = explainer.label_embeddings(self, self.labels)

    def score(self, outputs, index, position, extra, kind):
        similarity = F.normalize(outputs.float(), dim=-1) @ self.label_embeddings.T
        picked = similarity.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        n = similarity.shape[-1]
        if kind == "cosine" or n == 1:
            return picked
        return picked - (similarity.sum(-1) - picked) / (n - 1)

    def plan(self, units, outputs, target):
        wanted = resolve_class(target, self.labels, what="label")
        rows, groups = [], []
        for u, pooled in enumerate(outputs):
            similarity = F.normalize(pooled.float(), dim=-1) @ self.label_embeddings.T
            predicted = int(similarity.argmax())
            index = predicted if wanted is None else wanted
            groups.append(Group(u, [len(rows)], {
                "prediction": self.labels[predicted],
                "label_similarity": {label: float(s) for label, s in zip(self.labels, similarity)},
                "label_template": self.explainer.label_template,
            }))
            rows.append(Row(u, index, self.labels[index]))
        return rows, groups


def check_labels(labels) -> list[str]:
    if labels is None:
        raise ValueError(
            "labels are required for zero-shot classification: Explainer(..., labels=['positive', 'negative'])"
        )
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)) or not labels:
        raise TypeError(f"labels must be a non-empty list of label strings, got {labels!r}")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"labels[{i}] must be a non-empty string, got {label!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {list(labels)}")
    return list(labels)


TASKS = {cls.name: cls for cls in (ClassifyTask, TaggingTask, MultipleChoiceTask, SimilarityTask, ZeroShotTask)}


HEAD_SUFFIXES = (
    ("ForSequenceClassification", "classify"), ("ForTokenClassification", "tagging"),
    ("ForMultipleChoice", "multiple_choice"), ("ForCausalLM", "generate"), ("LMHeadModel", "generate"),
)


def task_for_class(class_name: str) -> str | None:
    """The task a model class name implies by its head, or None (a bare encoder, or unknown)."""
    return next((task for suffix, task in HEAD_SUFFIXES if class_name.endswith(suffix)), None)


def infer_task(model, labels) -> str:
    """The task a model's class implies (``task="auto"``)."""
    task = task_for_class(type(model).__name__)
    if task is not None:
        return task
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False) and callable(
            getattr(model, "get_output_embeddings", None)) and model.get_output_embeddings() is not None:
        return "generate"  # T5, BART, Marian, mBART: a seq2seq LM
    if getattr(model, "base_model", None) is model:
        return "zero-shot" if labels is not None else "similarity"
    raise ValueError(
        f"task='auto' cannot tell the task of a {type(model).__name__}; pass task= one of {TASK_CHOICES[1:]}"
    )


def forward_parameters(model) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()
