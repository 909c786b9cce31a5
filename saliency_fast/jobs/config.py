"""The configuration of a data-set attribution job: plain data that round-trips through JSON.

A job is fully described by its :class:`JobConfig` (which model, which method, which columns,
how rows are grouped): it is what travels to Ray actors or Spark executors (no model inside),
and what the manifest records so that a resumed job provably computes the same thing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers

DEFAULT_MODEL = "default"
ENGINE_CHOICES = ("local", "ray")
# fields that change neither which rows a shard holds nor what is computed for a row
_RUNTIME_FIELDS = ("batch_size", "device")


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """What to attribute and how.

    ``model`` is a local Hugging Face directory (model + tokenizer, as ``save_pretrained`` writes
    it) or ``"default"`` for the embedded all-MiniLM-L6-v2. ``task``, ``labels`` and ``reference``
    go to the Explainer; ``method``, ``target``, ``score``, ``aggregate``, ``baseline`` and
    ``method_kwargs`` to ``Explainer.attribute``. For a generation model (``task="generate"``)
    each text is a prompt for ``Explainer.attribute_generation`` and ``target`` its target function;
    the job then needs ``max_new_tokens`` (tokens generated greedily) or ``generated_column`` (the
    column holding each row's response to force: the continuation of a decoder-only model's prompt,
    the target text of an encoder-decoder model), or both (the response cut to ``max_new_tokens``
    tokens). ``id_column=None`` takes the ``id`` column when
    the input has one, else the row's position in the input. ``batch_size`` texts go to the model
    at once; ``shard_size`` rows make one output file (the unit of resume).
    """

    model: str = DEFAULT_MODEL
    task: str = "auto"
    labels: tuple[str, ...] | None = None
    reference: str | None = None
    method: str = "saliency"
    target: int | str | None = None
    score: str | None = None
    aggregate: str = "l2"
    baseline: str = "pad"
    method_kwargs: dict = dataclasses.field(default_factory=dict)
    text_column: str = "text"
    id_column: str | None = None
    max_new_tokens: int | None = None
    generated_column: str | None = None
    batch_size: int = 16
    shard_size: int = 1000
    device: str | None = None

    def __post_init__(self):
        for name in ("model", "task", "method", "aggregate", "baseline", "text_column"):
            _check_str(name, getattr(self, name))
        for name in ("reference", "score", "id_column", "generated_column", "device"):
            value = getattr(self, name)
            if value is not None:
                _check_str(name, value)
        for name in ("batch_size", "shard_size", "max_new_tokens"):
            value = getattr(self, name)
            if value is None and name == "max_new_tokens":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.generated_column is not None and self.generated_column == self.text_column:
            raise ValueError(f"generated_column and text_column are both {self.text_column!r}; the prompt and the "
                             "response to explain must be two columns")
        if self.aggregate == "none":
            raise ValueError(
                "aggregate='none' keeps one score per embedding dim, too large for a data-set job; "
                "choose a reducing aggregate such as 'l2', 'sum', 'abs_sum' or 'dot'"
            )
        if self.target is not None and (isinstance(self.target, bool) or not isinstance(self.target, (int, str))):
            raise TypeError(f"target must be None, a class index (int) or a label name (str), got {self.target!r}")
        if self.labels is not None:
            if isinstance(self.labels, str) or not all(isinstance(v, str) for v in self.labels) or not self.labels:
                raise TypeError(f"labels must be a non-empty list of strings, got {self.labels!r}")
            object.__setattr__(self, "labels", tuple(self.labels))
        if not isinstance(self.method_kwargs, dict) or not all(isinstance(k, str) for k in self.method_kwargs):
            raise TypeError(f"method_kwargs must be a dict with string keys, got {self.method_kwargs!r}")
        if "max_new_tokens" in self.method_kwargs or "generated_text" in self.method_kwargs:
            raise ValueError("set max_new_tokens / generated_column in the job config (--max-new-tokens, "
                             "--generated-column), not in method_kwargs")
        try:
            json.dumps(self.method_kwargs, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"method_kwargs must hold JSON values only (numbers, strings, lists): {exc}") from exc

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels) if self.labels is not None else None
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> JobConfig:
        if not isinstance(data, dict):
            raise TypeError(f"a job config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown job config field(s) {unknown}; expected some of {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> JobConfig:
        return cls.from_dict(json.loads(text))

    def model_key(self) -> str:
        """What decides the loaded Explainer: configs with equal keys share one model in a process."""
        return json.dumps([self.model, self.task, self.to_dict()["labels"], self.reference, self.device, self.batch_size])

    def fingerprint(self) -> str:
        """Hash of everything that decides the output rows (not batch size or device), so a
        resumed job can refuse to mix results computed under a different config."""
        data = {k: v for k, v in self.to_dict().items() if k not in _RUNTIME_FIELDS}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _check_str(name: str, value) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty string, got {value!r}")
