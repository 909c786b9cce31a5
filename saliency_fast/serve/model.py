"""``ServedModel``: the Explainer behind the server, and one batch of instances in, one outcome each out.

An outcome is a JSON-safe dict (``prediction``, and ``explanation`` for ``explain``) or the
:class:`~saliency_fast.serve.protocol.ServeError` that instance alone earned. Texts that cannot be
attributed (over the model's length limit, no tokens, the wrong kind of instance) are turned away
before the batched call; if the batched call still fails, every instance is retried alone, so only
the culprits fail and the others' results are those of a batched call.
"""

from __future__ import annotations

from saliency_fast.hf import generation, model_io
from saliency_fast.serve.config import ServeConfig
from saliency_fast.serve.logs import log_failure
from saliency_fast.serve.protocol import ExplainParameters, GenerationInstance, ServeError

OPERATIONS = ("explain", "predict")
SERVED_TASKS = ("classify", "tagging", "similarity", "zero-shot", "generate")


class ServedModel:
    """An :class:`~saliency_fast.Explainer` and the name it is served under."""

    def __init__(self, explainer, name: str):
        if explainer.task not in SERVED_TASKS:
            raise ValueError(f"the server serves tasks {SERVED_TASKS}; this Explainer's task is {explainer.task!r}")
        self.explainer = explainer
        self.name = name
        self.limit = model_io.max_positions(explainer.model)

    @classmethod
    def load(cls, config: ServeConfig) -> ServedModel:
        import torch

        from saliency_fast.hf.explainer import Explainer

        kwargs = {
            "task": config.explainer_task, "labels": config.explainer_labels, "reference": config.reference,
            "device": config.device or ("cuda" if torch.cuda.is_available() else "cpu"),
            "batch_size": config.max_batch_size,
        }
        if config.model is None:
            from saliency_fast.hf import default_model

            explainer = Explainer(*default_model(), **kwargs)
        else:
            explainer = Explainer.from_pretrained(config.model, **kwargs)
        return cls(explainer, config.model_name)

    @property
    def generates(self) -> bool:
        return self.explainer.task == "generate"

    def describe(self) -> dict:
        return {"name": self.name, "task": self.explainer.task, "max_tokens": self.limit}

    def run(self, operation: str, instances: list, parameters: ExplainParameters | None) -> list:
        """One outcome per instance (a dict, or a ServeError); never raises."""
        if operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}, got {operation!r}")
        outcomes: list = [None] * len(instances)
        accepted = []
        for i, problem in enumerate(self._problems(instances)):
            if problem is None:
                accepted.append(i)
            else:
                outcomes[i] = problem
        if len(accepted) > 1 and not self.generates:  # generation takes one prompt a call anyway
            try:
                batch = self._call(operation, [instances[i] for i in accepted], parameters)
            except Exception:  # noqa: BLE001 - someone's text is bad: each alone below finds whose
                batch = None
            if batch is not None:
                for i, outcome in zip(accepted, batch):
                    outcomes[i] = outcome
                return outcomes
        for i in accepted:
            outcomes[i] = self._run_alone(operation, instances[i], parameters)
        return outcomes

    # ----------------------------------------------------------------------------- internals

    def _problems(self, instances: list) -> list[ServeError | None]:
        """Why each instance cannot be attributed (None: it can), decided before any model call."""
        wanted = GenerationInstance if self.generates else str
        takes = ('instances {"prompt", "generated_text" or "max_new_tokens"}, not plain texts' if self.generates
                 else "texts as instances, not generation objects")
        problems: list[ServeError | None] = [
            None if isinstance(instance, wanted)
            else ServeError(400, f"this model ({self.explainer.task}) takes {takes}") for instance in instances
        ]
        texts = [(i, x.prompt if self.generates else x) for i, x in enumerate(instances) if problems[i] is None]
        if texts and self.limit is not None:
            lengths = [len(ids) for ids in self.explainer.tokenizer([text for _, text in texts])["input_ids"]]
            for (i, _), n_tokens in zip(texts, lengths):
                if n_tokens > self.limit:
                    what = "the prompt" if self.generates else "the text"
                    problems[i] = ServeError(
                        422, f"{what} is {n_tokens} tokens long; the model accepts at most {self.limit} tokens",
                        limit=self.limit, tokens=n_tokens,
                    )
        return problems

    def _run_alone(self, operation: str, instance, parameters):
        try:
            return self._call(operation, [instance], parameters)[0]
        except (ValueError, TypeError) as exc:  # the Explainer's word on bad input: a clear message
            details = {"limit": self.limit} if "accepts at most" in str(exc) else {}
            return ServeError(422, str(exc), **details)
        except Exception as exc:  # noqa: BLE001 - one caller's failure must not reach the others
            log_failure("model call failed", exc)
            return ServeError(500, f"the model failed on this instance ({type(exc).__name__})")

    def _call(self, operation: str, instances: list, parameters: ExplainParameters | None) -> list[dict]:
        if self.generates:
            return [self._generation(operation, instance, parameters) for instance in instances]
        if operation == "predict":
            return [{"prediction": found.pop("prediction"), "details": found}
                    for found in self.explainer.predictions(list(instances))]
        p = parameters
        results = self.explainer.attribute(
            list(instances), method=p.method, target=p.target, baseline=p.baseline, aggregate=p.aggregate,
            score=p.score, progress=False, **_method_kwargs(p),
        )
        return [{"prediction": r.metadata.get("prediction", r.targets), "explanation": r.to_dict()} for r in results]

    def _generation(self, operation: str, instance: GenerationInstance, parameters) -> dict:
        tokenizer = self.explainer.tokenizer
        if operation == "predict":
            if instance.max_new_tokens is None:
                raise ValueError("predict generates: give max_new_tokens")
            ids, n_prompt = generation.sequence_ids(self.explainer.model, tokenizer, instance.prompt,
                                                    instance.max_new_tokens, None)
            return {"prediction": tokenizer.decode(ids[n_prompt:], skip_special_tokens=True)}
        p = parameters
        if p.score is not None:
            raise ValueError("score does not apply to generation; the parameter target picks logit, prob, logprob "
                             "or loss")
        result = self.explainer.attribute_generation(
            instance.prompt, max_new_tokens=instance.max_new_tokens, generated_text=instance.generated_text,
            method=p.method, target="logit" if p.target is None else p.target, aggregate=p.aggregate,
            baseline=p.baseline, **_method_kwargs(p),
        )
        n_prompt = len(result.tokens) - len(result.targets)
        continuation = tokenizer.decode(result.token_ids[n_prompt:], skip_special_tokens=True)
        return {"prediction": continuation, "explanation": result.to_dict()}


def _method_kwargs(parameters: ExplainParameters) -> dict:
    return {} if parameters.n_steps is None else {"n_steps": parameters.n_steps}
