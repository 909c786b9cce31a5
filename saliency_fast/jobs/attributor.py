"""``Attributor``: a picklable callable that turns a batch of texts into a batch of attributions.

It holds only its :class:`JobConfig`; the model is loaded on first use, once per process, so the
same object works in a plain loop, as a Ray Data ``map_batches`` UDF, or in a Spark
``mapInArrow`` / ``mapInPandas`` function. Each output row holds the input id, the tokens, the
scores (``[n_targets][n_tokens]``), the targets, the completeness error of path methods, and
``error``: null, or why that row could not be attributed. A bad row (empty, too long, not text)
never fails the batch: the batch is retried row by row and only the rows that fail carry an error.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from saliency_fast.jobs import io
from saliency_fast.jobs.config import DEFAULT_MODEL, JobConfig
from saliency_fast.jobs.plan import id_name

PROBE_TEXT = "hello world"
PROBE_RESPONSE = " world"  # forced after PROBE_TEXT when the job reads responses from a column
_EXPLAINERS: dict[str, object] = {}  # model key -> Explainer, one per process
_PROBED: set[str] = set()  # configs (as JSON) that attributed the probe text in this process


class JobConfigError(ValueError):
    """The job's config cannot attribute even a plain probe text: no row would succeed."""


def result_schema(id_type: pa.DataType) -> pa.Schema:
    """The columns of every result batch (plain list columns: any Parquet reader takes them)."""
    return pa.schema([
        ("id", id_type),
        ("tokens", pa.list_(pa.string())),
        ("scores", pa.list_(pa.list_(pa.float32()))),
        ("target", pa.list_(pa.string())),
        ("target_id", pa.list_(pa.int64())),
        ("completeness_error", pa.list_(pa.float64())),
        (io.ERROR_COLUMN, pa.string()),
    ])


class Attributor:
    """``Attributor(config)(batch) -> results``.

    ``batch`` is a ``pyarrow.Table`` or ``RecordBatch``, a pandas ``DataFrame``, or a dict of
    columns, holding ``config.text_column`` and the id column (``config.id_column``, or ``id``);
    the results come back in the same kind, one row per input row, in input order. Rows whose
    ``error`` column is already set (an unreadable input line) pass through untouched.
    """

    def __init__(self, config: JobConfig | dict | str):
        if isinstance(config, str):
            config = JobConfig.from_json(config)
        elif isinstance(config, dict):
            config = JobConfig.from_dict(config)
        elif not isinstance(config, JobConfig):
            raise TypeError(f"config must be a JobConfig, a dict or a JSON string, got {type(config).__name__}")
        self.config = config

    # the model never travels: a copy loads its own on first use
    def __getstate__(self) -> dict:
        return {"config": self.config.to_dict()}

    def __setstate__(self, state: dict) -> None:
        self.config = JobConfig.from_dict(state["config"])

    def __repr__(self) -> str:
        return f"Attributor({self.config!r})"

    def __call__(self, batch, on_rows: Callable[[int], None] | None = None):
        """``on_rows(n)`` is called as rows finish (for progress bars)."""
        table, give_back = _as_table(batch)
        texts, responses, ids, errors = self._columns(table)
        rows: list[dict | None] = [None] * len(texts)
        pending = [
            i for i, text in enumerate(texts)
            if errors[i] is None and _check_text("text", text, errors, i)
            and (responses is None or _check_text("response", responses[i], errors, i))
        ]
        if on_rows is not None and len(pending) < len(texts):
            on_rows(len(texts) - len(pending))
        if pending:
            explainer = self.explainer()
            # similar lengths batch together (less padding); sorted() is stable, so this is deterministic
            pending.sort(key=lambda i: len(texts[i]))
            for at in range(0, len(pending), self.config.batch_size):
                chunk = pending[at : at + self.config.batch_size]
                chunk_responses = None if responses is None else [responses[i] for i in chunk]
                for i, row in zip(chunk, self._attribute_rows(explainer, [texts[i] for i in chunk], chunk_responses)):
                    if isinstance(row, Exception):
                        errors[i] = _message(row)
                    else:
                        rows[i] = row
                if on_rows is not None:
                    on_rows(len(chunk))
        return give_back(_results_table(ids, rows, errors))

    def explainer(self):
        """The Explainer of this config, loaded once per process; each config is first probed on
        a plain text, so that a config error fails loudly instead of as an error on every row."""
        key = self.config.model_key()
        explainer = _EXPLAINERS.get(key)
        if explainer is None:
            explainer = _load_explainer(self.config)
            _EXPLAINERS.clear()  # one model per process: a new one replaces the old one
            _EXPLAINERS[key] = explainer
        if self.config.to_json() not in _PROBED:
            try:
                self._attribute(explainer, [PROBE_TEXT], None if self.config.generated_column is None else [PROBE_RESPONSE])
            except Exception as exc:
                raise JobConfigError(
                    f"this job's config cannot attribute even the text {PROBE_TEXT!r}: {_message(exc)}"
                ) from exc
            _PROBED.add(self.config.to_json())
        return explainer

    def _columns(self, table: pa.Table) -> tuple[list, list | None, pa.ChunkedArray, list]:
        """The texts, the responses (None unless the job forces them), the ids and the errors."""
        c = self.config
        names = table.column_names
        wanted = [("text_column", c.text_column), ("id_column", id_name(c))]
        if c.generated_column is not None:
            wanted.append(("generated_column", c.generated_column))
        for option, name in wanted:
            if name not in names:
                raise ValueError(f"batch has no column {name!r} (columns: {names}); set {option} to one of them")
        texts = table.column(c.text_column).to_pylist()
        responses = None if c.generated_column is None else table.column(c.generated_column).to_pylist()
        errors = table.column(io.ERROR_COLUMN).to_pylist() if io.ERROR_COLUMN in names else [None] * len(texts)
        return texts, responses, table.column(id_name(c)), errors

    def _attribute_rows(self, explainer, texts: list[str], responses: list[str] | None) -> list:
        """One result row per text: a dict, or the exception that text raised. The texts go to the
        model together; if that fails, one at a time, so only the culprits fail."""
        if len(texts) > 1 and explainer.task != "generate":  # generation takes one prompt a call anyway
            try:
                return [_row(r) for r in self._attribute(explainer, texts, responses)]
            except Exception:
                pass
        rows = []
        for k, text in enumerate(texts):
            try:
                rows.append(_row(self._attribute(explainer, [text], None if responses is None else [responses[k]])[0]))
            except Exception as exc:
                rows.append(exc)
        return rows

    def _attribute(self, explainer, texts: list[str], responses: list[str] | None) -> list:
        """The one model call: an ``AttributionResult`` per text."""
        c = self.config
        common = {"method": c.method, "aggregate": c.aggregate, "baseline": c.baseline, **c.method_kwargs}
        if explainer.task == "generate":  # as in Explainer.attribute_generation, target is the function
            if c.score is not None:
                raise ValueError("score does not apply to generation; set target to logit, prob, logprob or loss")
            if c.max_new_tokens is None and c.generated_column is None:
                raise ValueError(
                    "a generation job needs max_new_tokens (--max-new-tokens N: generate N tokens greedily) or "
                    "generated_column (--generated-column COL: force the response held in that column)"
                )
            target = {} if c.target is None else {"target": c.target}
            forced = [None] * len(texts) if responses is None else [
                _forced_text(explainer, text, response) for text, response in zip(texts, responses)
            ]
            return [
                explainer.attribute_generation(text, max_new_tokens=c.max_new_tokens, generated_text=full, **target, **common)
                for text, full in zip(texts, forced)
            ]
        if c.max_new_tokens is not None or c.generated_column is not None:
            raise ValueError(
                f"max_new_tokens and generated_column apply to generation models only; this model's task is {explainer.task!r}"
            )
        return explainer.attribute(texts, target=c.target, score=c.score, progress=False, **common)


def _load_explainer(config: JobConfig):
    from saliency_fast.hf.explainer import Explainer

    kwargs = {
        "task": config.task, "labels": list(config.labels) if config.labels else None, "reference": config.reference,
        "device": _device(config), "batch_size": config.batch_size,
    }
    if config.model == DEFAULT_MODEL:
        from saliency_fast.hf.packaged_model import default_model

        return Explainer(*default_model(), **kwargs)
    return Explainer.from_pretrained(config.model, **kwargs)


def _device(config: JobConfig) -> str:
    if config.device is not None:
        return config.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _row(result) -> dict:
    scores = result.scores.detach().float().cpu().numpy()
    if scores.ndim != 2:
        raise ValueError(f"expected scores of shape [n_targets, n_tokens], got {list(scores.shape)}")
    completeness = result.metadata.get("completeness_error")
    return {
        "tokens": [str(t) for t in result.tokens],
        "scores": scores.tolist(),
        "target": [str(t) for t in result.targets],
        "target_id": None if result.target_ids is None else [int(t) for t in result.target_ids],
        "completeness_error": None if completeness is None else np.atleast_1d(completeness).astype(float).tolist(),
    }


def _results_table(ids: pa.ChunkedArray, rows: list[dict | None], errors: list) -> pa.Table:
    schema = result_schema(ids.type)
    columns = {"id": ids}
    for field in schema:
        if field.name not in columns:
            if field.name == io.ERROR_COLUMN:
                values = errors
            else:
                values = [None if row is None else row[field.name] for row in rows]
            columns[field.name] = pa.array(values, field.type)
    return pa.table(columns, schema=schema)


def _forced_text(explainer, prompt: str, response: str) -> str:
    """``generated_text`` as Explainer.attribute_generation takes it (inseq's convention): the
    target text alone for an encoder-decoder model, prompt + response for a decoder-only one."""
    if getattr(explainer.model.config, "is_encoder_decoder", False):
        return response
    return prompt + response


def _check_text(what: str, text, errors: list, i: int) -> bool:
    if text is None:
        errors[i] = f"{what} is missing (null)"
    elif not isinstance(text, str):
        errors[i] = f"{what} must be a string, got {type(text).__name__}"
    elif not text.strip():
        errors[i] = f"{what} is empty"
    return errors[i] is None


def _message(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _as_table(batch) -> tuple[pa.Table, Callable]:
    """``batch`` as a Table, and the function that turns a result Table back into its kind."""
    if isinstance(batch, pa.Table):
        return batch, lambda t: t
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch]), lambda t: pa.RecordBatch.from_arrays(
            [c.combine_chunks() for c in t.columns], schema=t.schema
        )
    if isinstance(batch, dict):
        return pa.table(batch), pa.Table.to_pydict
    if type(batch).__module__.split(".")[0] == "pandas":  # no pandas import for the other kinds
        import pandas

        if isinstance(batch, pandas.DataFrame):
            return pa.Table.from_pandas(batch, preserve_index=False), pa.Table.to_pandas
    raise TypeError(
        f"batch must be a pyarrow Table or RecordBatch, a pandas DataFrame or a dict of columns, got {type(batch).__name__}"
    )
