"""The explain server, through real HTTP on an ephemeral loopback port: KServe V1 endpoints,
batching equal to direct Explainer calls, every error code, auth, SIGTERM drain, escaped logs,
generation instances, and the Ray Serve engine on a local Ray instance; on tiny random models."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from tiny_models import bert_tokenizer, save_tiny_classifier, tiny_bert, tiny_gpt2

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from saliency_fast import cli  # noqa: E402
from saliency_fast.hf.explainer import Explainer  # noqa: E402
from saliency_fast.serve.logs import escape_for_log  # noqa: E402
from saliency_fast.serve.config import ServeConfig  # noqa: E402
from saliency_fast.serve.local import bind, local_app, uvicorn_server  # noqa: E402
from saliency_fast.serve.model import ServedModel  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
NAME = "tiny"
TEXTS = ["a great movie", "the plot was boring and the acting bad", "i loved it", "not very fun at all",
         "terrible film", "it is good", "the movie was not bad and i loved the plot", "boring"]
TOO_LONG = " ".join(["movie"] * 300)  # the tiny model takes 128 positions
EXPLAIN = f"/v1/models/{NAME}:explain"


@pytest.fixture(scope="module")
def served():
    return ServedModel(Explainer(tiny_bert("classification"), bert_tokenizer()), NAME)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny_classifier"))


@contextlib.contextmanager
def running(served_model, **options):
    """A uvicorn server with the local engine on 127.0.0.1:<free port>, in a thread; yields its URL."""
    config = ServeConfig(host="127.0.0.1", port=0, **options)
    server = uvicorn_server(local_app(config, served_model), config, log_level="warning")
    sock = bind(config.host, config.port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def post_all(url: str, bodies: list, headers=None, path: str = EXPLAIN) -> list[httpx.Response]:
    """POST every body at once (concurrent callers); JSON values, or raw bytes as they are."""
    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(
                client.post(path, content=b, headers=headers) if isinstance(b, bytes)
                else client.post(path, json=b, headers=headers) for b in bodies))

    return asyncio.run(go())


def metric(url: str, name: str, headers=None) -> float:
    text = httpx.get(url + "/metrics", headers=headers).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def assert_scores_equal(explanation: dict, direct) -> None:
    assert explanation["tokens"] == direct.tokens
    assert explanation["targets"] == direct.targets
    np.testing.assert_allclose(np.array(explanation["scores"], float), direct.scores.numpy(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ endpoints


def test_endpoints_speak_kserve_v1(served):
    direct = served.explainer.attribute("a great movie", method="input_x_gradient")
    predicted = served.explainer.predictions("a great movie")
    with running(served) as url:
        assert httpx.get(url + "/v1/models").json() == {"models": [NAME]}
        assert httpx.get(url + f"/v1/models/{NAME}").json() == {"name": NAME, "ready": True}
        missing = httpx.get(url + "/v1/models/other")
        assert missing.status_code == 404 and missing.json()["models"] == [NAME]
        assert httpx.get(url + "/v2/health/live").json() == {"live": True}
        assert httpx.get(url + "/v2/health/ready").json() == {"ready": True}

        answer = httpx.post(url + EXPLAIN, json={"instances": ["a great movie"],
                                                 "parameters": {"method": "input_x_gradient"}})
        assert answer.status_code == 200
        body = answer.json()
        assert body["predictions"] == [predicted["prediction"]]
        assert body["explanations"][0] == json.loads(json.dumps(direct.to_dict()))  # the result's to_dict()

        prediction = httpx.post(url + f"/v1/models/{NAME}:predict", json={"instances": ["a great movie", "boring"]})
        assert prediction.status_code == 200
        assert prediction.json()["predictions"][0] == predicted["prediction"]
        assert prediction.json()["details"][0]["label_probs"] == pytest.approx(predicted["label_probs"], abs=1e-6)

        metrics = httpx.get(url + "/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        for name in ("saliency_serve_requests_total", "saliency_serve_errors_total", "saliency_serve_batch_size_count",
                     "saliency_serve_queue_depth", "saliency_serve_request_latency_seconds_count"):
            assert name in metrics.text, name
        assert metric(url, 'saliency_serve_requests_total{code="200",endpoint="/v1/models/{name}:explain"}') == 1
        assert metric(url, 'saliency_serve_errors_total{code="404",endpoint="/v1/models/{name}"}') == 1


def test_concurrent_callers_share_explainer_calls_and_get_the_direct_results(served):
    saliency = {"method": "saliency"}
    ig = {"method": "integrated_gradients", "n_steps": 8, "aggregate": "sum"}
    bodies = [{"instances": [t], "parameters": saliency} for t in TEXTS] + \
             [{"instances": [t], "parameters": ig} for t in TEXTS[:4]] + \
             [{"instances": TEXTS[4:6], "parameters": saliency}]  # two instances in one request
    direct_saliency = [served.explainer.attribute(t) for t in TEXTS]
    direct_ig = [served.explainer.attribute(t, method="integrated_gradients", n_steps=8, aggregate="sum")
                 for t in TEXTS[:4]]
    with running(served, max_batch_size=16, max_wait_ms=300) as url:
        answers = post_all(url, bodies)
        calls = metric(url, "saliency_serve_batch_size_count")
        instances = metric(url, "saliency_serve_batch_size_sum")
    assert [a.status_code for a in answers] == [200] * len(bodies)
    assert instances == len(TEXTS) + 4 + 2
    assert calls < len(bodies) / 2  # requests waited for each other: a few Explainer calls, one per parameter set
    for answer, direct in zip(answers, direct_saliency + direct_ig):
        assert_scores_equal(answer.json()["explanations"][0], direct)
    for explanation, direct in zip(answers[-1].json()["explanations"], direct_saliency[4:6]):
        assert_scores_equal(explanation, direct)


def test_one_callers_bad_text_fails_that_caller_alone(served):
    good = TEXTS[:5]
    bodies = [{"instances": [t]} for t in good[:2]] + [{"instances": [TOO_LONG]}, {"instances": ["   "]},
                                                        {"instances": ["a movie"], "parameters": {"target": 17}}]
    bodies += [{"instances": [t]} for t in good[2:]]
    direct = [served.explainer.attribute(t) for t in good]
    with running(served, max_batch_size=16, max_wait_ms=300) as url:
        answers = post_all(url, bodies)
    codes = [a.status_code for a in answers]
    assert codes == [200, 200, 422, 422, 422, 200, 200, 200]
    too_long = answers[2].json()
    assert too_long["limit"] == 128 and too_long["instance"] == 0 and "at most 128 tokens" in too_long["error"]
    assert "empty" in answers[3].json()["error"]
    assert "17" in answers[4].json()["error"]
    for answer, result in zip([a for a in answers if a.status_code == 200], direct):
        assert_scores_equal(answer.json()["explanations"][0], result)


def test_explainer_predictions_are_what_attribute_reports(served):
    zero_shot = Explainer(tiny_bert("base"), bert_tokenizer(), task="zero-shot", labels=["good", "bad", "meh"])
    for explainer in (served.explainer, zero_shot):
        predicted = explainer.predictions(TEXTS[:3])
        for found, result in zip(predicted, explainer.attribute(TEXTS[:3])):
            assert found["prediction"] == result.metadata["prediction"] == result.targets[0]
            scores = "label_probs" if explainer.task == "classify" else "label_similarity"
            assert found[scores] == pytest.approx(result.metadata[scores], abs=1e-6)
    assert served.explainer.predictions("a movie")["prediction"] in served.explainer.model.config.id2label.values()


# ------------------------------------------------------------------------------ limits, errors


def test_every_bad_input_gets_its_code(served):
    with running(served, max_body_bytes=2000, max_queue=4) as url:
        def post(content=None, **kwargs):
            return httpx.post(url + EXPLAIN, content=content, **kwargs)

        malformed = post(b'{"instances": ["a movie"')
        assert malformed.status_code == 400 and malformed.json() == {"error": "malformed JSON body"}
        for body, where in (({"texts": ["a"]}, "instances"), ({"instances": []}, "instances"),
                            ({"instances": ["a"], "parameters": {"method": "magic"}}, "parameters.method"),
                            ({"instances": ["a"], "parameters": {"n_steps": 0}}, "parameters.n_steps"),
                            ({"instances": [{"prompt": "a", "max_new_tokens": 2}]}, None)):
            answer = post(json=body)
            assert answer.status_code == 400, body
            if where is not None:
                assert any(p["at"].startswith(where) for p in answer.json()["problems"]), answer.json()
        assert "texts" in post(json={"instances": [{"prompt": "a", "max_new_tokens": 2}]}).json()["error"]

        too_big = post(json={"instances": ["movie " * 400]})
        assert too_big.status_code == 413 and too_big.json()["limit"] == 2000

        async def chunked():  # no Content-Length: the limit holds while the body streams in
            async def parts():
                for _ in range(10):
                    yield b" " * 500

            async with httpx.AsyncClient(base_url=url) as client:
                return await client.post(EXPLAIN, content=parts())

        assert asyncio.run(chunked()).status_code == 413

        too_long = post(json={"instances": [" ".join(["movie"] * 200)]})
        assert too_long.status_code == 422 and too_long.json()["limit"] == 128
        assert post(json={"instances": ["a"] * 5}).status_code == 413  # more than the queue can ever hold
        assert httpx.get(url + f"/v1/models/{NAME}:explain").status_code in (404, 405)
        assert httpx.post(url + "/v1/models/other:explain", json={"instances": ["a"]}).status_code == 404
        assert post(json={"instances": ["a great movie"]}).status_code == 200  # and the server is still up


def test_a_full_queue_answers_503_with_retry_after(served, monkeypatch):
    gate = threading.Event()
    run = served.run

    def gated_run(*args):
        gate.wait(30)
        return run(*args)

    monkeypatch.setattr(served, "run", gated_run)

    async def go(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            held = [asyncio.create_task(client.post(EXPLAIN, json={"instances": [t]})) for t in TEXTS[:3]]
            await asyncio.sleep(0.5)  # one at the (gated) model, two waiting: the queue of 2 is full
            refused = await client.post(EXPLAIN, json={"instances": ["one too many"]})
            gate.set()
            return refused, await asyncio.gather(*held)

    with running(served, max_batch_size=1, max_wait_ms=0, max_queue=2) as url:
        refused, held = asyncio.run(go(url))
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert [a.status_code for a in held] == [200, 200, 200]


def test_auth_on_needs_the_bearer_token(served):
    with running(served, token="s3cret-token") as url:
        missing = httpx.post(url + EXPLAIN, json={"instances": ["a movie"]})
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        for header in ("Bearer wrong", "Bearer s3cret-token-and-more", "Basic s3cret-token", "s3cret-token"):
            assert httpx.get(url + "/v1/models", headers={"Authorization": header}).status_code == 401, header
        assert httpx.get(url + "/metrics").status_code == 401
        good = {"Authorization": "Bearer s3cret-token"}
        assert httpx.get(url + "/v1/models", headers=good).status_code == 200
        assert httpx.post(url + EXPLAIN, json={"instances": ["a movie"]}, headers=good).status_code == 200
        assert httpx.get(url + "/v2/health/ready").status_code == 200  # probes carry no token


def test_auth_off_serves_without_a_token(served):
    with running(served) as url:
        assert httpx.post(url + EXPLAIN, json={"instances": ["a movie"]}).status_code == 200


def test_log_lines_escape_what_callers_send():
    assert escape_for_log("/v1/models/x\n2026 INFO forged\x1b[31m") == "/v1/models/x\\n2026 INFO forged\\x1b[31m"
    assert escape_for_log("é" * 300).endswith("...") and escape_for_log("é").isascii()


# ------------------------------------------------------------------------------------ generation


def test_generation_instances_take_a_prompt_and_a_continuation():
    model, tokenizer = tiny_gpt2()
    served = ServedModel(Explainer(model, tokenizer), "gpt")
    forced = served.explainer.attribute_generation("the movie was", generated_text="the movie was very good")
    greedy = served.explainer.attribute_generation("the movie was", max_new_tokens=3)
    with running(served) as url:
        answer = httpx.post(url + "/v1/models/gpt:explain", json={"instances": [
            {"prompt": "the movie was", "generated_text": "the movie was very good"},
            {"prompt": "the movie was", "max_new_tokens": 3}]})
        text = httpx.post(url + "/v1/models/gpt:explain", json={"instances": ["the movie was"]})
        predicted = httpx.post(url + "/v1/models/gpt:predict", json={"instances": [
            {"prompt": "the movie was", "max_new_tokens": 3}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0] == "very good"
    for explanation, direct in zip(answer.json()["explanations"], (forced, greedy)):
        assert_scores_equal(explanation, direct)
    assert text.status_code == 400 and "prompt" in text.json()["error"]
    assert predicted.json()["predictions"] == [answer.json()["predictions"][1]]


# ------------------------------------------------------------------------- the command, SIGTERM


def start_cli(*args: str) -> tuple[subprocess.Popen, str, list[str]]:
    """``saliency-fast serve ARGS`` in a child process: ``(process, its URL, its stderr lines so far)``;
    a thread keeps reading stderr, so a chatty server never blocks on a full pipe."""
    process = subprocess.Popen(
        [sys.executable, "-m", "saliency_fast", "serve", "--port", "0", *args], cwd=REPO, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    lines: list[str] = []
    for line in process.stderr:
        lines.append(line)
        found = re.search(r"serving \S+ on (http://127\.0\.0\.1:\d+)", line)
        if found:
            threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
            return process, found.group(1), lines
    raise AssertionError(f"the server did not start (exit {process.wait()}): {''.join(lines[-20:])}")


def test_sigterm_drains_requests_in_flight_then_exits(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("t0ken\n")
    # no --model: the embedded all-MiniLM-L6-v2
    process, url, lines = start_cli("--max-wait-ms", "1500", "--max-batch-size", "64", "--token-file",
                                    str(token_file))
    headers = {"Authorization": "Bearer t0ken"}
    try:
        assert httpx.get(url + "/v1/models", headers=headers).json() == {"models": ["all-MiniLM-L6-v2"]}
        httpx.get(url + "/v1/models/evil%0A2026%20INFO%20forged%1B%5B31m", headers=headers)  # decoded: \n, ESC

        async def in_flight():
            async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as client:
                request = asyncio.create_task(
                    client.post("/v1/models/all-MiniLM-L6-v2:explain", json={"instances": ["a great movie"]}))
                await asyncio.sleep(0.5)  # the request waits in the batcher (max-wait 1.5 s)
                process.send_signal(signal.SIGTERM)
                return await request

        answer = asyncio.run(in_flight())
        assert answer.status_code == 200 and answer.json()["explanations"][0]["tokens"][1:4] == ["a", "great", "movie"]
        assert process.wait(30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/v2/health/live")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
    time.sleep(0.5)  # the reader thread takes the last lines
    log = "".join(lines)
    assert "Application shutdown complete" in log
    assert "\x1b" not in log and "\n2026 INFO forged" not in log and "evil\\n2026 INFO forged\\x1b[31m" in log


def test_a_model_failure_is_a_500_for_its_caller_and_an_escaped_log_line(served, monkeypatch, caplog):
    call = served._call

    def failing(operation, instances, parameters):
        if any("boom" in text for text in instances):
            raise RuntimeError("boom \x1b[31m\nforged line")
        return call(operation, instances, parameters)

    monkeypatch.setattr(served, "_call", failing)
    with running(served, max_batch_size=8, max_wait_ms=300) as url:
        answers = post_all(url, [{"instances": ["boom"]}, {"instances": ["a great movie"]}])
    assert [a.status_code for a in answers] == [500, 200]
    assert answers[0].json()["error"] == "the model failed on this instance (RuntimeError)"
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "saliency_fast.serve")
    assert "boom \\x1b[31m\\nforged line" in logged and "\x1b" not in logged


def test_serve_command_refuses_bad_options(tmp_path, capsys):
    (tmp_path / "empty").write_text("  \n")
    assert cli.main(["serve", "--token-file", str(tmp_path / "empty")]) == 2
    assert "--token-file" in capsys.readouterr().err
    assert cli.main(["serve", "--model", str(tmp_path / "missing")]) == 2
    with pytest.raises(SystemExit):
        cli.main(["serve", "--max-batch-size", "0"])


# ---------------------------------------------------------------------------------- Ray engine


def test_ray_engine_batches_answers_as_the_local_engine_and_drains_on_sigterm(model_dir, tmp_path):
    pytest.importorskip("ray.serve")
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()  # Ray Serve's proxy binds it itself
    (tmp_path / "token").write_text("tok")
    explainer = Explainer.from_pretrained(model_dir)
    direct = [explainer.attribute(t) for t in TEXTS[:4]]
    process, url, _ = start_cli("--engine", "ray", "--port", str(port), "--model", str(model_dir),
                                "--max-batch-size", "8", "--max-wait-ms", "1000", "--token-file", str(tmp_path / "token"))
    headers = {"Authorization": "Bearer tok"}
    path = f"/v1/models/{model_dir.name}:explain"
    try:
        answers = post_all(url, [{"instances": [t]} for t in TEXTS[:4]] + [b"{", {"instances": [TOO_LONG]}],
                           headers, path=path)
        names = httpx.get(url + "/v1/models", headers=headers).json()
        calls = metric(url, "saliency_serve_batch_size_count", headers)
        unauthorized = httpx.get(url + "/v1/models").status_code

        async def in_flight():
            async with httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as client:
                request = asyncio.create_task(client.post(path, json={"instances": [TEXTS[0]]}))
                await asyncio.sleep(0.5)  # the request waits in @serve.batch (max-wait 1 s)
                process.send_signal(signal.SIGTERM)
                return await request

        drained = asyncio.run(in_flight())
        assert process.wait(120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert [a.status_code for a in answers] == [200] * 4 + [400, 422]
    assert answers[-1].json()["limit"] == 128
    assert names == {"models": [model_dir.name]} and unauthorized == 401
    assert calls < 4  # the four texts shared Explainer calls
    for answer, result in zip(answers, direct):
        assert_scores_equal(answer.json()["explanations"][0], result)
    assert drained.status_code == 200
    assert_scores_equal(drained.json()["explanations"][0], direct[0])
