"""One method registry: a method declared in ``hf/method_registry`` (here registered by the test) is
available to ``Explainer.attribute``, ``Explainer.attribute_generation``, the command line's help and
the server's parameters, with no other module touched; removed, it is gone from all of them."""

from __future__ import annotations

import pytest
import torch

import saliency_fast
from saliency_fast.cli import main
from saliency_fast.hf import causal_pass, method_registry
from saliency_fast.hf.method_io import EmbeddingJob, GenerationJob, GenerationOutput, MethodOutput
from saliency_fast.serve.protocol import ExplainParameters
from tiny_models import bert_tokenizer, tiny_bert, tiny_gpt2

PROMPT, FULL = "the movie was", "the movie was good w5 w7 bad"


def _doubled_gradient(job: EmbeddingJob) -> MethodOutput:
    """A toy method: ``scale`` times the gradient, computed with plain autograd."""
    inputs = job.inputs.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(job.forward(inputs, *job.args).sum(), inputs)
    return MethodOutput(job.kwargs.get("scale", 2.0) * grad)


def _generation_input_x_gradient(job: GenerationJob) -> GenerationOutput:
    causal_pass.saliency(job.cp, job.board, times_input=True)
    return GenerationOutput({"toy": job.kwargs.get("scale")})


TOY = method_registry.MethodSpec("toy_scaled", frozenset({"scale"}), classify=_doubled_gradient,
                                 generate=_generation_input_x_gradient)
CLASSIFY_ONLY = method_registry.MethodSpec("toy_classify_only", frozenset(), classify=_doubled_gradient)


@pytest.fixture
def registered():
    for spec in (TOY, CLASSIFY_ONLY):
        method_registry.register(spec)
    yield
    for spec in (TOY, CLASSIFY_ONLY):
        method_registry.unregister(spec.name)


def test_a_registered_method_classifies(registered):
    model, tok = tiny_bert(), bert_tokenizer()
    explainer = saliency_fast.Explainer(model, tok)
    toy = explainer.attribute("a good film", method="toy_scaled", scale=3.0, aggregate="sum")
    plain = explainer.attribute("a good film", method="saliency", aggregate="sum")
    torch.testing.assert_close(toy.scores[toy.mask], 3.0 * plain.scores[plain.mask], rtol=1e-5, atol=1e-6)
    assert toy.metadata["method"] == "toy_scaled"
    with pytest.raises(TypeError, match="unexpected keyword arguments.*n_steps"):
        explainer.attribute("a good film", method="toy_scaled", n_steps=4)


def test_a_registered_method_runs_in_generation(registered):
    model, tok = tiny_gpt2()
    explainer = saliency_fast.Explainer(model, tok)
    toy = explainer.attribute_generation(PROMPT, generated_text=FULL, method="toy_scaled", scale=5, progress=False)
    ixg = explainer.attribute_generation(PROMPT, generated_text=FULL, method="input_x_gradient", progress=False)
    torch.testing.assert_close(toy.scores, ixg.scores, equal_nan=True)
    assert toy.metadata["toy"] == 5 and toy.metadata["method"] == "toy_scaled"
    with pytest.raises(ValueError, match="'toy_classify_only' is not available for generation.*toy_scaled"):
        explainer.attribute_generation(PROMPT, generated_text=FULL, method="toy_classify_only")


def test_the_cli_and_the_server_read_the_registry(registered, capsys):
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    assert "toy_scaled" in " ".join(capsys.readouterr().out.split())
    assert ExplainParameters(method="toy_classify_only").method == "toy_classify_only"


def test_unregistered_methods_are_gone():
    assert "toy_scaled" not in method_registry.method_names()
    with pytest.raises(ValueError, match="method must be one of"):
        method_registry.resolve_method("toy_scaled")
    with pytest.raises(ValueError, match="method must be one of"):
        ExplainParameters(method="toy_scaled")


def test_register_refuses_a_taken_name_or_no_runner():
    with pytest.raises(ValueError, match="already registered"):
        method_registry.register(method_registry.METHODS["saliency"])
    with pytest.raises(ValueError, match="has no runner"):
        method_registry.register(method_registry.MethodSpec("toy_nothing", frozenset()))
    with pytest.raises(TypeError, match="spec must be a MethodSpec"):
        method_registry.register("saliency")


@pytest.mark.parametrize("task", method_registry.TASKS)
def test_every_declared_runner_resolves(task):
    """A runner named by a string resolves to a function (a typo would fail only at first use)."""
    for name in method_registry.method_names(task):
        assert callable(method_registry.METHODS[name].runner(task)), name
    for spec in method_registry.METHODS.values():
        if spec.check is not None:
            method_registry._load(spec.check)({})
