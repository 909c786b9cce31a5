"""``Explainer``: token attributions for Hugging Face models in one call.

    explainer = Explainer(model, tokenizer)            # task from the model class
    result = explainer.attribute("a great movie", method="integrated_gradients")
    result.show()

Data flow: texts -> task units (token sequences) -> one prediction pass (the default target is
the prediction) -> rows (one attributed scalar each) -> length-bucketed batches -> word
embeddings and baselines -> method -> gradients -> aggregate over the embedding dim -> one
``AttributionResult`` per text. Only word embeddings are attributed: the model adds positions
and token types to ``inputs_embeds`` itself (see :mod:`saliency_fast.hf.model_io`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import numbers

import torch
from torch import nn
from tqdm.auto import tqdm

import saliency_fast
from saliency_fast import ops
from saliency_fast.hf import baselines, batching, method_registry, model_io, tasks
from saliency_fast.hf.method_io import EmbeddingJob
from saliency_fast.hf.layers import LayerRequest
from saliency_fast.hf.packaged_model import POOLING_CHOICES, sentence_pooling
from saliency_fast.hf.checks import NonFiniteAttributionError, check_aggregate, conservation_metadata, eager_attention
from saliency_fast.hf.targets import class_labels
from saliency_fast.methods import _common

class Explainer:
    """Attribute a Hugging Face model's predictions to its input tokens.

    Args:
        model: a ``transformers`` model (any head whose inputs can be fed as ``inputs_embeds``).
        tokenizer: its tokenizer.
        task: ``auto`` (from the model class: ``*ForSequenceClassification`` -> ``classify``,
            ``*ForTokenClassification`` -> ``tagging``, ``*ForMultipleChoice`` ->
            ``multiple_choice``, causal LM or encoder-decoder LM -> ``generate``, a bare encoder -> ``zero-shot`` when
            ``labels`` are given, else ``similarity``), or one of those names.
        labels: zero-shot label names; for a classification head, names for its classes.
        label_template: how a zero-shot label becomes a sentence to embed.
        reference: default reference text for ``similarity``.
        device, dtype: move the model (in place) before attributing; ``None`` keeps it as is.
        batch_size: rows per forward pass (texts, or tagging positions, per batch).
        exclude_special_tokens: special tokens (CLS, SEP, ...) keep their real embedding on every
            path and get no score (NaN, mask False); ``False`` attributes them like any token.
        pooling: sentence embedding of a bare encoder: ``mean`` over real tokens
            (sentence-transformers' default) or ``cls``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        task: str = "auto",
        labels: list[str] | None = None,
        label_template: str = "This text is {}.",
        reference: str | None = None,
        device=None,
        dtype: torch.dtype | None = None,
        batch_size: int = 16,
        exclude_special_tokens: bool = True,
        pooling: str = "mean",
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (a transformers model), got {type(model).__name__}")
        if not callable(tokenizer) or not hasattr(tokenizer, "convert_ids_to_tokens"):
            raise TypeError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}")
        self.embedding = model_io.word_embeddings(model)
        if task not in tasks.TASK_CHOICES:
            raise ValueError(f"task must be one of {tasks.TASK_CHOICES}, got {task!r}")
        if not isinstance(label_template, str) or "{}" not in label_template:
            raise ValueError(f"label_template must be a string containing '{{}}' for the label, got {label_template!r}")
        if pooling not in POOLING_CHOICES:
            raise ValueError(f"pooling must be one of {POOLING_CHOICES}, got {pooling!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.task = tasks.infer_task(model, labels) if task == "auto" else task
        self.labels = labels
        self.label_template = label_template
        self.reference = reference
        self.batch_size = int(batch_size)
        self.exclude_special_tokens = bool(exclude_special_tokens)
        self.pooling = pooling
        self.decoder_only = batching.is_decoder_only(model)
        self._forward_parameters = tasks.forward_parameters(model)
        self._label_embeddings: dict[tuple, torch.Tensor] = {}
        self._baseline_resolver = baselines.Resolver(tokenizer)
        self._check_labels_for_task()

    def _check_labels_for_task(self) -> None:
        if self.task in ("classify", "tagging") and self.labels is not None:
            n = len(class_labels(self.model))
            if not isinstance(self.labels, (list, tuple)) or len(self.labels) != n:
                raise ValueError(f"labels must name each of the model's {n} classes, got {self.labels!r}")
            self.model.config.id2label = {i: str(label) for i, label in enumerate(self.labels)}
            self.model.config.label2id = {str(label): i for i, label in enumerate(self.labels)}
        if self.task == "zero-shot" and self.labels is not None:
            tasks.check_labels(self.labels)

    @classmethod
    def from_pretrained(cls, path, task: str = "auto", labels: list[str] | None = None, **kwargs) -> Explainer:
        """Load a model directory (or hub id) and its tokenizer; the head follows ``task``.

        A sentence-transformers directory's pooling (``1_Pooling/config.json``) is honoured.
        """
        import transformers

        if task not in tasks.TASK_CHOICES:
            raise ValueError(f"task must be one of {tasks.TASK_CHOICES}, got {task!r}")
        auto = {
            "classify": transformers.AutoModelForSequenceClassification,
            "tagging": transformers.AutoModelForTokenClassification,
            "multiple_choice": transformers.AutoModelForMultipleChoice,
            "generate": transformers.AutoModelForCausalLM,
        }
        try:
            config = transformers.AutoConfig.from_pretrained(str(path))
            seq2seq_lm = getattr(config, "is_encoder_decoder", False) and task in ("auto", "generate")
            if seq2seq_lm:
                task = "generate"
                auto["generate"] = transformers.AutoModelForSeq2SeqLM
            elif task == "auto":
                task = _task_from_architectures(getattr(config, "architectures", None) or [], labels)
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
            model = auto.get(task, transformers.AutoModel).from_pretrained(str(path))
        except OSError as exc:
            raise ValueError(f"path {str(path)!r} is not a loadable model directory or hub id: {exc}") from exc
        pooling = sentence_pooling(path)
        if pooling is not None:
            kwargs.setdefault("pooling", pooling)
        return cls(model, tokenizer, task=task, labels=labels, **kwargs)

    # ------------------------------------------------------------------------------- public API

    def attribute(
        self,
        texts,
        method: str = "saliency",
        target=None,
        baseline="pad",
        aggregate: str = "l2",
        *,
        score: str | None = None,
        choices=None,
        reference=None,
        labels=None,
        contrast_targets=None,
        progress: bool | None = None,
        **method_kwargs,
    ):
        """Attribute each text's score to its tokens; one result per text (a list for a list).

        Args:
            texts: a string or a list of strings (prompts, for multiple choice).
            method: a method of :mod:`~saliency_fast.hf.method_registry` (``method_names("classify")``).
            target: ``None`` (the prediction), a class / label / choice index or name;
                ``"all"`` for multiple choice gives a list of results, one per choice. Tagging
                attributes every position (rows), the predicted tag or this class at each.
            baseline: ``pad``, ``mask``, ``unk``, ``eos``, ``zero`` or a tensor ``[D]`` / ``[n_tokens, D]``;
                read only by the methods that use one, a missing token falls back as
                :mod:`saliency_fast.hf.baselines` says (``metadata["baseline"]``: the kind used).
            aggregate: how the embedding dim becomes one score: ``l2`` (default), ``sum``,
                ``abs_sum``, ``dot`` (attribution . embedding) or ``none`` (keep it).
            score: the scalar attributed: for heads ``logit`` (default), ``prob``, ``logprob``,
                ``loss``; for a classifier also ``contrast_prob_diff`` / ``contrast_logit_diff``, the
                target's probability / logit minus that of ``contrast_targets``; for zero-shot ``margin`` (default) or ``cosine``; ``cosine`` for similarity.
            choices: multiple choice: the choices (one list, or one list per prompt).
            reference: similarity: the reference text (or one per text).
            labels: zero-shot: label names for this call.
            contrast_targets: a contrastive score's competing class (index or label name).
            progress: show a progress bar (default: when there is more than one batch).
            method_kwargs: the method's options (``n_steps``, ``quadrature``, ``nt_samples``, ...).
        """
        if self.task == "generate":
            raise ValueError("this Explainer's task is 'generate' (a causal LM): use attribute_generation(prompt, ...)")
        spec = method_registry.resolve_method(method, "classify")
        method_registry.check_method_kwargs(spec, method_kwargs)
        items, single = model_io.check_texts(texts)
        check_aggregate(aggregate)
        layer_request = LayerRequest.pop(self.model, spec, method_kwargs, aggregate)  # layer=, layers=, layer_path=
        resolved = self.baseline_for(spec, baseline)
        task = self._make_task(choices=choices, reference=reference, labels=labels)
        kind = task.score_choices[0] if score is None else score
        if kind not in task.score_choices:
            raise ValueError(f"score must be one of {task.score_choices} for task {task.name!r}, got {score!r}")
        task.set_contrast(contrast_targets, kind)
        units = task.encode(items)
        rows, groups = task.plan(units, self.predict(task, units), target)
        attributed = self._attribute_rows(task, units, rows, spec, kind, resolved, aggregate, method_kwargs, progress,
                                          layer_request)
        per_example: dict[int, list] = {}
        for group in groups:
            result = self._result(task, units[group.unit], group, rows, attributed, spec, kind, resolved, aggregate,
                                  layer_request)
            per_example.setdefault(units[group.unit].example, []).append(result)
        all_choices = task.name == "multiple_choice" and isinstance(target, str) and target == "all"
        outputs = [found if all_choices else found[0] for found in per_example.values()]
        return outputs[0] if single else outputs

    def predictions(self, texts, *, choices=None, reference=None, labels=None):
        """What the model predicts for each text, without gradients: the ``prediction`` and the
        scores behind it (``label_probs``, ``label_similarity``, ``similarity``), as the
        metadata of :meth:`attribute`'s results holds them; a dict per text (one for a string)."""
        if self.task == "generate":
            raise ValueError("this Explainer's task is 'generate': its prediction is a generation, not a label")
        items, single = model_io.check_texts(texts)
        task = self._make_task(choices=choices, reference=reference, labels=labels)
        units = task.encode(items)
        _, groups = task.plan(units, self.predict(task, units), None)
        found = {units[group.unit].example: dict(group.metadata) for group in groups}
        outputs = [found[example] for example in sorted(found)]
        return outputs[0] if single else outputs

    def attribute_generation(
        self,
        prompt: str,
        max_new_tokens: int | None = None,
        generated_text: str | None = None,
        method: str = "saliency",
        target: str = "logit",
        aggregate: str = "l2",
        baseline="pad",
        **method_kwargs,
    ):
        """Attribute every generated token to every earlier token of a causal LM's output, or of an
        encoder-decoder model's output to its source and target prefix.

        Generates ``max_new_tokens`` greedily, or forces ``generated_text`` (the full text:
        prompt + continuation; for an encoder-decoder model the target text alone, and the result
        also has ``source_tokens`` / ``source_scores``). ``target``: ``logit``, ``prob``, ``logprob`` or ``loss``. The
        result has one row per generated token over all tokens, NaN at and after each target.
        The engine is :func:`saliency_fast.hf.generation.attribute_generation`.
        """
        from saliency_fast.hf import generation

        if self.task != "generate":
            raise ValueError(
                f"attribute_generation needs a causal LM or an encoder-decoder LM (task='generate'); this Explainer's "
                f"task is {self.task!r}: "
                "use attribute(texts, ...)"
            )
        return generation.attribute_generation(
            self, prompt, max_new_tokens=max_new_tokens, generated_text=generated_text, method=method,
            target=target, aggregate=aggregate, baseline=baseline, **method_kwargs,
        )

    def evaluate(self, texts, methods, *, k: int = 20, ks=(1, 5, 10, 20, 50), baseline: str = "pad",
                 aggregate: str = "sum", batch_size: int | None = None, progress: bool = False) -> dict[str, list]:
        """Faithfulness of each method on ``texts`` (a classifier), as a table: a dict of lists, one
        entry per method: ``method``, ``n_texts``, ``seconds`` (attribution time), the mean
        log-odds / comprehensiveness / sufficiency at ``k`` % (``log_odds@20``, ...) and their
        AOPC over ``ks`` (``aopc_log_odds``, ...), as defined by Sanyal & Ren (2021); see
        :mod:`saliency_fast.metrics`.

        ``methods``: a list of method names, or a dict name -> method options (``n_steps``, ...).
        ``baseline`` (``pad``, ``mask``, ``unk``, ``eos``; a missing token falls back as in ``attribute``)
        is both the attribution baseline and the token log-odds puts in place of the top tokens.
        ``aggregate`` (default ``sum``, signed, as in the paper) turns attributions into the scores
        tokens are ranked by.
        """
        from saliency_fast.hf import evaluation

        return evaluation.evaluate(self, texts, methods, k=k, ks=ks, baseline=baseline, aggregate=aggregate,
                                   batch_size=batch_size, progress=progress)

    def influence(self, train_texts, train_labels, test_texts, k: int = 10, layers: list[str] | None = None,
                  projection_dim: int | None = 256, checkpoints=None, output=None, backend: str | None = None,
                  batch_size: int | None = None, shard_size: int = 1024, seed: int = 0, progress: bool = False,
                  projection: str = "pca"):
        """For each test text, the ``k`` training texts that most raised (``proponents``) and
        lowered (``opponents``) the probability of its predicted class: TracIn over ``layers``
        (default: the last block's Linear layers and the head), each layer's per-example
        gradient projected to at most ``projection_dim`` numbers (None: exact), summed over
        ``checkpoints`` weighted by learning rate, and searched with FAISS. ``projection``:
        ``"pca"`` fits each layer's projection to the first 256 training texts' gradients,
        ``"random"`` draws it from ``seed`` (docs/influence.md).

        ``checkpoints``: None (the model's current weights), or paths / ``(path, learning_rate)``
        pairs of state dicts (``.safetensors``, or ``torch.save`` files read with
        ``weights_only``); a saved ``learning_rate`` entry is used when no rate is given.
        ``output``: a directory that keeps the training-gradient index (a resumable job; the
        same call reuses it); None works in a temporary one. ``backend``: ``faiss-gpu``,
        ``faiss-cpu`` or ``torch`` (default: the first available). Returns one
        :class:`~saliency_fast.hf.influence.InfluenceResult` per test text.
        """
        from saliency_fast.hf import influence as influence_lib

        return influence_lib.influence(
            self, train_texts, train_labels, test_texts, k=k, layers=layers, projection_dim=projection_dim,
            checkpoints=checkpoints, output=output, backend=backend, batch_size=batch_size, shard_size=shard_size,
            seed=seed, progress=progress, projection=projection,
        )

    # ------------------------------------------------------------------------- shared helpers

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    @property
    def model_name(self) -> str:
        config = getattr(self.model, "config", None)
        return str(getattr(config, "_name_or_path", "") or type(self.model).__name__)

    def accepts(self, argument: str) -> bool:
        """Whether the model's forward takes ``argument`` (e.g. ``token_type_ids``)."""
        return argument in self._forward_parameters

    def base_metadata(self, task: str, method: str, target: str, aggregate: str,
                      baseline: baselines.Baseline | None) -> dict:
        """The metadata every result carries (engines add n_steps, completeness_error, ...);
        ``baseline`` is the kind used (``None`` for methods that read none)."""
        return {
            "task": task, "method": method, "target": target, "aggregate": aggregate,
            "baseline": None if baseline is None else baseline.kind,
            "backend": ops.active_backend(), "version": saliency_fast.__version__,
            "model": self.model_name,
        }

    def baseline_for(self, spec: method_registry.MethodSpec, baseline) -> baselines.Baseline | None:
        """The baseline ``spec``'s method starts from, or ``None`` for methods that read none (the
        argument is checked either way, the tokenizer only when it is used)."""
        baselines.check(baseline, self.embedding.embedding_dim)
        if not spec.uses_baseline:
            return None
        return self.resolve_baseline(baseline, needs_token=spec.token_baseline)

    def resolve_baseline(self, baseline, needs_token: bool = False) -> baselines.Baseline:
        """``baseline`` (a kind or a tensor) as used: a kind the tokenizer lacks falls back along
        :data:`~saliency_fast.hf.baselines.FALLBACKS`, warning once per Explainer and fallback;
        ``needs_token`` skips the zero fallback."""
        baselines.check(baseline, self.embedding.embedding_dim)
        return self._baseline_resolver(baseline, needs_token=needs_token)

    def gradient_mode(self, keep: tuple[nn.Module, ...] = ()):
        """Frozen parameters (autograd reaches the inputs only) and fused activations (except the
        modules in ``keep``): see :func:`saliency_fast.methods._common.gradient_mode`."""
        return _common.gradient_mode(self.model, keep)

    def lrp_mode(self, spec: method_registry.MethodSpec):
        """The LRP rules of ``spec`` on the model (:func:`saliency_fast.methods.lrp.lrp_rules`) for a
        method that runs under them (``spec.lrp_rules``), else a context giving None. Entered before
        :meth:`gradient_mode`, whose fused activations then leave the rules' activations as they are."""
        if not spec.lrp_rules:
            return contextlib.nullcontext()
        from saliency_fast.methods import lrp

        return lrp.lrp_rules(self.model, spec.name)

    def predict(self, task: tasks.Task, units: list[tasks.Unit]) -> list[torch.Tensor]:
        """The task's outputs for every unit, without gradients (length-bucketed batches)."""
        found: list[torch.Tensor | None] = [None] * len(units)
        with torch.no_grad():
            for bucket in batching.length_buckets([len(u.input_ids) for u in units], self.batch_size):
                batch = self._pad([units[u] for u in bucket])
                out = task.outputs(self.embedding(batch.input_ids), batch.attention_mask, batch.token_type_ids,
                                   batch.position_ids)
                for b, u in enumerate(bucket):
                    found[u] = (batch.crop(out, b) if task.positional else out[b]).detach()
        return found

    def label_embeddings(self, task: tasks.Task, labels: list[str]) -> torch.Tensor:
        """Unit-norm embeddings ``[n_labels, hidden]`` of the label prompts, computed once."""
        key = (tuple(labels), self.label_template, self.pooling)
        if key not in self._label_embeddings:
            prompts = [self.label_template.format(label) for label in labels]
            self._label_embeddings[key] = torch.nn.functional.normalize(task.embed(prompts).float(), dim=-1)
        return self._label_embeddings[key]

    # ----------------------------------------------------------------------------- internals

    def _make_task(self, choices, reference, labels) -> tasks.Task:
        given = {"choices": choices, "reference": reference, "labels": labels}
        takes = {"multiple_choice": "choices", "similarity": "reference", "zero-shot": "labels"}.get(self.task)
        for name, value in given.items():
            if value is not None and name != takes:
                raise ValueError(f"{name}= does not apply to task {self.task!r}")
        return tasks.TASKS[self.task](self, **({takes: given[takes]} if takes else {}))

    def _pad(self, units: list[tasks.Unit]) -> batching.PaddedBatch:
        types = [u.token_type_ids for u in units]
        return batching.pad(
            [u.input_ids for u in units], None if any(t is None for t in types) else types,
            batching.pad_id(self.tokenizer), left=self.decoder_only, device=self.device,
        )

    def _attribute_rows(self, task, units, rows, spec, kind, baseline, aggregate, method_kwargs, progress,
                        layer_request=None):
        """One :class:`_Attributed` per row, its scores cropped to the row's tokens."""
        found: list[_Attributed | None] = [None] * len(rows)
        buckets = batching.length_buckets([len(units[r.unit].input_ids) for r in rows], self.batch_size)
        show = len(buckets) > 1 if progress is None else bool(progress)
        # forward-only methods stack texts of different lengths: each runs at its own
        score_forward = _score_forward_by_length if spec.perturbs else _score_forward
        forward = functools.partial(score_forward, task, kind)
        with self.lrp_mode(spec) as rules, self.gradient_mode(keep=tuple(layer_request.modules) if layer_request else ()):
            for bucket in tqdm(buckets, desc=f"{spec.name}", unit="batch", disable=not show):
                batch_rows = [rows[r] for r in bucket]
                batch = self._pad([units[r.unit] for r in batch_rows])
                special = batch.place([units[r.unit].special for r in batch_rows],
                                      torch.zeros(batch.input_ids.shape, dtype=torch.bool)).to(self.device)
                keep = ~batch.real() | (special if self.exclude_special_tokens else torch.zeros_like(special))
                positions = torch.tensor([o + r.position for o, r in zip(batch.offsets, batch_rows)],
                                         device=self.device)
                out = self._method_batch(task, spec, forward, batch, batch_rows, keep, positions, baseline, aggregate,
                                         method_kwargs, layer_request)
                if rules is not None:
                    rules.check_attention_seen()
                for b, r in enumerate(bucket):
                    scores = batch.crop(out.scores, b).float().cpu().clone()
                    scores[batch.crop(keep, b).cpu()] = float("nan")
                    layers = None if out.layers is None else batch.crop(out.layers.transpose(1, 2), b).T.float().cpu()
                    found[r] = _Attributed(
                        scores,
                        None if out.completeness_error is None else float(out.completeness_error[b]),
                        None if out.n_steps is None else int(out.n_steps[b]),
                        layers,
                        None if out.conservation is None else (float(out.conservation[0][b]),
                                                               float(out.conservation[1][b])),
                    )
        return found

    def _method_batch(self, task, spec, forward, batch, batch_rows, keep, positions, baseline, aggregate,
                      method_kwargs, layer_request=None):
        embeds = self.embedding(batch.input_ids).detach()
        baseline_embeds = None if baseline is None else self._baselines(batch, baseline, keep)
        index = torch.tensor([r.index for r in batch_rows], device=self.device)
        extra = _stack_extra([r.extra for r in batch_rows], self.device)
        args = (batch.attention_mask, batch.token_type_ids, batch.position_ids, index, positions, extra)
        if layer_request is not None:
            layers, error, n_steps = layer_request.attribute(
                forward, embeds, baseline_embeds, args, method_kwargs, aggregate,
                method_kwargs.get("internal_batch_size", max(self.batch_size, len(batch_rows))),
            )
            layers = layers.masked_fill(keep.unsqueeze(1), float("nan"))  # as scores: no score for kept tokens
            return _Attributed(layers[:, -1], error, n_steps, layers)
        options = dict(method_kwargs)
        dtype = options.pop("dtype", None)
        out = spec.runner("classify")(EmbeddingJob(
            forward=forward, inputs=embeds, baselines=baseline_embeds, args=args, kwargs=options, dtype=dtype,
            keep=keep, input_ids=batch.input_ids,
            internal_batch_size=method_kwargs.get("internal_batch_size", max(self.batch_size, len(batch_rows))),
            model=self.model, baseline_token_id=None if baseline is None else baseline.token_id,
            special_token_ids=self._constant_token_ids(), embedding_matrix=self._embedding_matrix,
            attention=functools.partial(self._attention, task, batch, positions),
        ))
        attr = out.attributions.detach()
        if not bool(torch.isfinite(attr[batch.real()]).all()):
            raise NonFiniteAttributionError(
                f"method {spec.name!r} produced non-finite attributions (NaN or inf gradients: fp16 overflow, "
                "or NaN from the model); try dtype=torch.float32 or another baseline"
            )
        if spec.per_token:
            scores = attr[..., 0]
        else:
            scores = attr if aggregate == "none" else saliency_fast.aggregate(attr, aggregate, inputs=embeds)
        conservation = None
        if out.scores is not None:  # LRP: the sum of relevance over the real tokens against the score
            conservation = ((attr * batch.real().unsqueeze(-1)).sum((1, 2)).float(), out.scores)
        return _Attributed(scores, out.completeness_error, out.n_steps, out.layer_scores, conservation)

    def _embedding_matrix(self) -> torch.Tensor:
        """The rows the forward receives: the table itself, unless the module transforms it (scaled
        embeddings), in which case every row is embedded once."""
        if type(self.embedding) is nn.Embedding:
            return self.embedding.weight.detach()
        with torch.no_grad():
            return self.embedding(torch.arange(self.embedding.num_embeddings, device=self.device))

    def _constant_token_ids(self) -> list[int]:
        """Token ids whose positions are never attributed: padding, and special tokens unless asked."""
        ids = model_io.special_ids(self.tokenizer) if self.exclude_special_tokens else set()
        return sorted(ids | {batching.pad_id(self.tokenizer)})

    def _baselines(self, batch: batching.PaddedBatch, baseline: baselines.Baseline,
                   keep: torch.Tensor) -> torch.Tensor:
        rows = baseline.tensor
        if rows is not None and rows.dim() == 2:
            dim = self.embedding.embedding_dim
            for length in batch.lengths:
                if rows.shape[0] != length:
                    raise ValueError(
                        f"baseline tensor has {rows.shape[0]} rows but a text has {length} tokens; "
                        f"expected [n_tokens, {dim}] for every text, or one vector [{dim}]"
                    )
            fill = torch.zeros((*batch.input_ids.shape, dim), dtype=self.embedding.weight.dtype)
            baseline = dataclasses.replace(baseline, tensor=batch.place([rows] * len(batch.lengths), fill))
        with torch.no_grad():
            return baselines.baseline_embeds(self.embedding, batch.input_ids, baseline, keep)

    def _attention(self, task, batch, positions) -> torch.Tensor:
        """Attention paid by the task's query position(s) to every token, heads averaged:
        ``[B, n_layers, S]`` (what the ``attention`` method reads)."""
        with eager_attention(self.model), torch.no_grad():
            embeds = self.embedding(batch.input_ids)
            out = task.run_model(embeds, batch.attention_mask, batch.token_type_ids, batch.position_ids,
                                 output_attentions=True)
        attentions = getattr(out, "attentions", None)
        if not attentions:
            raise ValueError(f"method 'attention': {type(self.model).__name__} returns no attention weights")
        heads_mean = torch.stack([a.float().mean(1) for a in attentions], dim=1)  # [B, layers, query, key]
        queries = task.attention_queries(batch, positions).to(heads_mean.device)  # [B, query]
        return torch.einsum("bq,blqk->blk", queries, heads_mean)

    def _result(self, task, unit, group, rows, attributed, spec, kind, baseline, aggregate, layer_request=None):
        group_rows = [rows[r] for r in group.rows]
        found = [attributed[r] for r in group.rows]
        metadata = self.base_metadata(task.name, spec.name, kind, None if spec.per_token else aggregate, baseline)
        n_steps = sorted({f.n_steps for f in found})
        metadata["n_steps"] = (n_steps[0] if len(n_steps) == 1 else [f.n_steps for f in found]) \
            if spec.reports_completeness else None
        metadata["completeness_error"] = [f.completeness_error for f in found] if spec.reports_completeness else None
        if found[0].conservation is not None:
            metadata["conservation"] = conservation_metadata([f.conservation[0] for f in found],
                                                             [f.conservation[1] for f in found])
        if task.contrast is not None:
            metadata["contrast_target"] = task.contrast[1]
        metadata.update(group.metadata)
        if layer_request is not None:
            metadata.update(layer_request.metadata())
        keep = ~unit.special if self.exclude_special_tokens else torch.ones_like(unit.special)
        layers = None if found[0].layers is None else torch.stack([f.layers for f in found])
        return saliency_fast.AttributionResult(
            tokens=unit.tokens,
            scores=torch.stack([f.scores for f in found]),
            targets=[r.label for r in group_rows],
            mask=keep.unsqueeze(0).expand(len(group_rows), -1).clone(),
            metadata=metadata,
            token_ids=unit.input_ids.tolist(),
            word_ids=unit.word_ids,
            target_ids=[r.index for r in group_rows],
            layer_scores=layers,
            layer_names=None if layers is None else layer_request.labels if layer_request is not None else [
                f"layer {i}" for i in range(layers.shape[1])],
        )


@dataclasses.dataclass
class _Attributed:
    """Scores of a batch (``[B, S(, D)]``) or, cropped, of one row, with what path methods report."""

    scores: torch.Tensor
    completeness_error: torch.Tensor | float | None = None  # |sum(attr) - (F(x) - F(baseline))| per row
    n_steps: torch.Tensor | int | None = None  # gradient evaluations per row
    layers: torch.Tensor | None = None  # attention: [B, n_layers, S] / one row [n_layers, n_tokens]
    conservation: tuple | None = None  # LRP: (sum of relevance, attributed score), [B] each / floats per row


def _score_forward(task, kind, inputs_embeds, attention_mask, token_type_ids, position_ids, index, position, extra):
    """The attributed function: one score per batch element (module level, so methods can expand
    the per-row tensors in ``additional_forward_args`` like any other argument)."""
    outputs = task.outputs(inputs_embeds, attention_mask, token_type_ids, position_ids)
    return task.score(outputs, index, position, extra, kind)


def _score_forward_by_length(task, kind, inputs_embeds, attention_mask, token_type_ids, position_ids, index, position,
                             extra):
    """:func:`_score_forward` with each row run at its own length: rows are grouped by how far their
    attention mask reaches (trailing padding cut off), one forward per length. The perturbation
    methods use it: their forwards stack perturbed copies of texts of different lengths, and a
    right-padded column that no query attends changes no score."""
    width = attention_mask.shape[1]
    if attention_mask.dim() != 2 or inputs_embeds.shape[0] == 0:
        return _score_forward(task, kind, inputs_embeds, attention_mask, token_type_ids, position_ids, index,
                              position, extra)
    columns = torch.arange(1, width + 1, device=attention_mask.device)
    extents = (attention_mask.ne(0) * columns).amax(1).clamp_min(1)  # last attended column + 1
    lengths = extents.unique()
    if len(lengths) == 1 and int(lengths[0]) == width:
        return _score_forward(task, kind, inputs_embeds, attention_mask, token_type_ids, position_ids, index,
                              position, extra)

    def cut(t, rows, length):
        return None if t is None else t[rows, :length]

    def pick(t, rows):
        return None if t is None else t[rows]

    out = None
    for length in lengths.tolist():
        rows = (extents == length).nonzero().squeeze(1)
        scores = _score_forward(
            task, kind, cut(inputs_embeds, rows, length), cut(attention_mask, rows, length),
            cut(token_type_ids, rows, length), cut(position_ids, rows, length), pick(index, rows), pick(position, rows),
            pick(extra, rows),
        )
        if out is None:
            out = scores.new_empty((inputs_embeds.shape[0], *scores.shape[1:]))
        out[rows] = scores
    return out


def _stack_extra(extras: list[torch.Tensor | None], device) -> torch.Tensor | None:
    """Per-row constants as one ``[B, K]`` tensor, padded with -inf (multiple choice: a missing
    choice has zero probability)."""
    if extras[0] is None:
        return None
    width = max(e.shape[-1] for e in extras)
    out = torch.full((len(extras), width), float("-inf"), dtype=extras[0].dtype)
    for b, extra in enumerate(extras):
        out[b, : extra.shape[-1]] = extra
    return out.to(device)


def _task_from_architectures(architectures: list[str], labels) -> str:
    for name in architectures:
        task = tasks.task_for_class(name)
        if task is not None:
            return task
    return "zero-shot" if labels is not None else "similarity"
