"""KServe V1 request bodies (pydantic models) and the errors the server answers with.

``POST /v1/models/<name>:explain`` and ``:predict`` take ``{"instances": [...], "parameters": {...}}``.
An instance is a text, or for generation models ``{"prompt", "generated_text" | "max_new_tokens"}``.
Every error is a :class:`ServeError`: an HTTP status and a JSON body ``{"error": message, ...}``.
"""

from __future__ import annotations

from typing import Annotated, Union

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from saliency_fast.hf.checks import AGGREGATE_CHOICES
from saliency_fast.hf import method_registry
from saliency_fast.hf.baselines import BASELINE_CHOICES

# Bounds that keep one request from holding the model for minutes (a path method's cost grows with n_steps).
MAX_N_STEPS = 1024
MAX_NEW_TOKENS = 1024
MAX_TEXT_CHARS = 100_000


class ServeError(Exception):
    """An answer other than 200: ``status``, a message, and details for the JSON body."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **details):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.headers = headers or {}
        self.details = details

    def body(self) -> dict:
        return {"error": self.message, **self.details}

    def __reduce__(self):  # crosses Ray's process boundary with its details
        return (_rebuild_error, (self.status, self.message, self.headers, self.details))


def _rebuild_error(status, message, headers, details) -> ServeError:
    return ServeError(status, message, headers, **details)


def _one_of(choices, what: str):
    """``choices``: the names, or a function giving them at call time (the method registry can grow)."""

    def check(value: str) -> str:
        names = choices() if callable(choices) else choices
        if value not in names:
            raise ValueError(f"{what} must be one of {list(names)}")
        return value

    return pydantic.AfterValidator(check)


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]


class GenerationInstance(BaseModel):
    """One generation to explain: a prompt, and the full text to force or the tokens to generate."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt: Text
    generated_text: Text | None = None
    max_new_tokens: Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS)] | None = None

    @pydantic.model_validator(mode="after")
    def _one_continuation(self):
        if self.generated_text is None and self.max_new_tokens is None:
            raise ValueError("give generated_text (prompt + continuation, forced) or max_new_tokens (greedy)")
        return self


class ExplainParameters(BaseModel):
    """How to explain: requests with equal parameters share Explainer calls."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    method: Annotated[str, _one_of(method_registry.method_names, "method")] = "saliency"
    target: int | str | None = None
    aggregate: Annotated[str, _one_of(AGGREGATE_CHOICES, "aggregate")] = "l2"
    n_steps: Annotated[int, Field(ge=1, le=MAX_N_STEPS)] | None = None
    score: str | None = None
    baseline: Annotated[str, _one_of(BASELINE_CHOICES, "baseline")] = "pad"

    def key(self) -> str:
        """Equal for parameters that can share one Explainer call."""
        return self.model_dump_json()


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[Union[Text, GenerationInstance]] = Field(min_length=1)
    parameters: ExplainParameters = ExplainParameters()


def parse_request(body: bytes) -> ExplainRequest:
    """The request in ``body``; malformed JSON and a wrong shape are both 400, with what was wrong."""
    try:
        return ExplainRequest.model_validate_json(body)
    except pydantic.ValidationError as exc:
        problems = exc.errors(include_url=False, include_input=False, include_context=False)
        if any(p["type"] == "json_invalid" for p in problems):
            raise ServeError(400, "malformed JSON body") from None
        details = [{"at": ".".join(str(part) for part in p["loc"]), "problem": p["msg"]} for p in problems[:20]]
        raise ServeError(400, "invalid request body", problems=details) from None
