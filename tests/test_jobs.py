"""Data-set jobs: the Attributor, the local engine (shards, atomic writes, resume after SIGKILL),
the Ray engine on a real local cluster, and the ``batch`` command, on a tiny random BERT."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_models import bert_tokenizer, tiny_bert, tiny_gpt2

from saliency_fast import cli
from saliency_fast.hf.explainer import Explainer
from saliency_fast.jobs import Attributor, JobConfig, JobConfigError, io, read_results, run_local
from saliency_fast.jobs.runner import JobDir

WORDS = "the a movie film plot was is good bad great terrible boring fun and not very i it loved hated acting".split()
REPO = pathlib.Path(__file__).resolve().parents[1]
TOO_LONG = " ".join(["movie"] * 300)  # the tiny model takes 128 positions


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_classifier")
    tiny_bert("classification").save_pretrained(path)
    bert_tokenizer().save_pretrained(path)
    return path


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(2, 12))) for _ in range(n)]


def write_jsonl(path, rows: list, extra_lines=()) -> None:
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def assert_rows_equal(a: pa.Table, b: pa.Table, atol: float = 0.0) -> None:
    """Same ids, tokens, targets and errors; scores equal (within ``atol``, NaN where NaN)."""
    assert a.schema == b.schema
    for name in ("id", "tokens", "target", "target_id", "error"):
        assert a.column(name).to_pylist() == b.column(name).to_pylist(), name
    for x, y in zip(a.column("scores").to_pylist(), b.column("scores").to_pylist()):
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_allclose(np.array(x, float), np.array(y, float), rtol=0, atol=atol)


def test_config_round_trips_through_json_and_rejects_bad_values():
    config = JobConfig(model="m", labels=["pos", "neg"], method="integrated_gradients", target=1,
                       method_kwargs={"n_steps": 8}, id_column="doc", shard_size=10)
    assert JobConfig.from_json(config.to_json()) == config
    assert config.fingerprint() == JobConfig.from_dict(config.to_dict()).fingerprint()
    # batch size and device change how a job runs, not what it computes
    assert JobConfig(batch_size=3, device="cpu").fingerprint() == JobConfig().fingerprint()
    assert JobConfig(method="occlusion").fingerprint() != JobConfig().fingerprint()
    with pytest.raises(ValueError, match="batch_size"):
        JobConfig(batch_size=0)
    with pytest.raises(ValueError, match="aggregate='none'"):
        JobConfig(aggregate="none")
    with pytest.raises(TypeError, match="labels"):
        JobConfig(labels="positive")
    with pytest.raises(TypeError, match="method_kwargs"):
        JobConfig(method_kwargs={"n_steps": object()})
    with pytest.raises(ValueError, match="unknown job config field"):
        JobConfig.from_dict({"modle": "x"})


def test_attributor_equals_the_explainer_for_every_batch_kind(model_dir):
    texts = make_texts(9)
    config = JobConfig(model=str(model_dir), batch_size=4, device="cpu")
    attributor = Attributor(config)
    table = attributor(pa.table({"id": list(range(9)), "text": texts}))

    direct = Explainer.from_pretrained(model_dir, device="cpu").attribute(texts)
    assert table.column("id").to_pylist() == list(range(9))
    assert table.column("error").null_count == 9
    for row, result in zip(table.to_pylist(), direct):
        assert row["tokens"] == result.tokens
        assert row["target"] == result.targets
        np.testing.assert_allclose(np.array(row["scores"], float), result.scores.numpy(), rtol=1e-5, atol=1e-6)

    as_dict = attributor({"id": list(range(9)), "text": texts})
    assert isinstance(as_dict, dict)
    assert_rows_equal(pa.table(as_dict, schema=table.schema), table)
    batch = attributor(pa.RecordBatch.from_pylist([{"id": i, "text": t} for i, t in enumerate(texts)]))
    assert isinstance(batch, pa.RecordBatch)
    assert_rows_equal(pa.Table.from_batches([batch]), table)
    frame = attributor(pytest.importorskip("pandas").DataFrame({"id": list(range(9)), "text": texts}))
    assert_rows_equal(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), table)

    # picklable for Ray / Spark: only the config travels, never the model
    copy = pickle.loads(pickle.dumps(attributor))
    assert copy.config == config and vars(copy) == {"config": config}
    assert_rows_equal(copy(pa.table({"id": list(range(9)), "text": texts})), table)


def test_bad_rows_carry_an_error_and_leave_the_others_alone(model_dir):
    texts = ["a good movie", "", "   ", None, TOO_LONG, "the plot was boring", "i loved it"]
    config = JobConfig(model=str(model_dir), method="integrated_gradients", method_kwargs={"n_steps": 8},
                       batch_size=8, device="cpu")
    table = Attributor(config)(pa.table({"id": [f"r{i}" for i in range(7)], "text": texts}))
    errors = table.column("error").to_pylist()
    assert errors[0] is None and errors[5] is None and errors[6] is None
    assert errors[1] == errors[2] == "text is empty"
    assert errors[3] == "text is missing (null)"
    assert "128" in errors[4] and "tokens" in errors[4]  # the model's limit, stated
    for i in (1, 2, 3, 4):
        row = table.slice(i, 1).to_pylist()[0]
        assert row["tokens"] is None and row["scores"] is None and row["completeness_error"] is None

    good = [texts[i] for i in (0, 5, 6)]
    direct = Explainer.from_pretrained(model_dir, device="cpu").attribute(
        good, method="integrated_gradients", n_steps=8)
    for i, result in zip((0, 5, 6), direct):
        row = table.slice(i, 1).to_pylist()[0]
        assert row["tokens"] == result.tokens
        np.testing.assert_allclose(np.array(row["scores"], float), result.scores.numpy(), rtol=1e-5, atol=1e-6)
        expected = np.atleast_1d(result.metadata["completeness_error"]).astype(float)
        np.testing.assert_allclose(row["completeness_error"], expected, rtol=1e-5, atol=1e-7)


def test_a_config_that_cannot_run_stops_the_job_with_a_clear_error(model_dir, tmp_path, capsys):
    with pytest.raises(JobConfigError, match="no_such_method"):
        Attributor(JobConfig(model=str(model_dir), method="no_such_method"))({"id": [1], "text": ["fine text"]})
    write_jsonl(tmp_path / "in.jsonl", [{"text": "fine text"}])
    argv = ["batch", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"),
            "--model", str(model_dir), "--no-progress"]
    assert cli.main([*argv, "--method", "no_such_method"]) == 2
    assert "no_such_method" in capsys.readouterr().err
    assert cli.main([*argv, "--text-column", "body"]) == 2
    assert "no column 'body'" in capsys.readouterr().err
    assert cli.main(["batch", "--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_local_job_on_jsonl_keeps_every_row_once_with_its_id(model_dir, tmp_path):
    texts = make_texts(23, seed=1)
    rows = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)]
    rows[4]["text"] = 42
    write_jsonl(tmp_path / "in.jsonl", rows[:10], ["", "not json {", "[1, 2]"])
    with open(tmp_path / "in.jsonl", "a", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in rows[10:]) + "\n")
    config = JobConfig(model=str(model_dir), shard_size=7, batch_size=4, device="cpu")
    summary = run_local(config, tmp_path / "in.jsonl", tmp_path / "out", progress=False)
    assert summary.ok and summary.shards == 4 and summary.rows == 25 and summary.row_errors == 3

    table = read_results(tmp_path / "out")
    ids = table.column("id").to_pylist()
    assert ids == [f"doc-{i}" for i in range(10)] + [None, None] + [f"doc-{i}" for i in range(10, 23)]
    errors = table.column("error").to_pylist()
    assert errors[4] == "text must be a string, got int"
    assert errors[10].startswith("in.jsonl row 11 is not valid JSON")
    assert errors[11] == "in.jsonl row 12 is not a JSON object (got list)"
    assert sum(e is not None for e in errors) == 3

    good = [i for i, e in enumerate(errors) if e is None]
    expected = Attributor(config)(pa.table({"id": [ids[i] for i in good], "text": [texts[int(ids[i][4:])] for i in good]}))
    assert_rows_equal(table.take(good), expected, atol=1e-6)

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["config"] == config.to_dict()
    assert manifest["summary"]["rows"] == 25 and manifest["summary"]["failed"] == []
    assert [s["status"] for s in manifest["shards"]] == ["done"] * 4


def test_local_job_on_a_parquet_directory_numbers_rows_across_files(model_dir, tmp_path):
    texts = make_texts(30, seed=2)
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"body": texts[:17]}), tmp_path / "data" / "a.parquet", row_group_size=5)
    pq.write_table(pa.table({"body": texts[17:]}), tmp_path / "data" / "b.parquet", row_group_size=4)
    config = JobConfig(model=str(model_dir), text_column="body", shard_size=6, batch_size=4, device="cpu")
    summary = run_local(config, tmp_path / "data", tmp_path / "out", progress=False)
    assert summary.ok and summary.shards == 3 + 3  # shards never span two files
    table = read_results(tmp_path / "out")
    assert table.column("id").to_pylist() == list(range(30))
    assert_rows_equal(table, Attributor(config)(pa.table({"id": list(range(30)), "body": texts})), atol=1e-6)


def test_resume_keeps_finished_shards_and_refuses_a_different_job(model_dir, tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in make_texts(12)])
    config = JobConfig(model=str(model_dir), shard_size=5, device="cpu")
    run = lambda cfg, **kw: run_local(cfg, tmp_path / "in.jsonl", tmp_path / "out", progress=False, **kw)  # noqa: E731
    first = run(config)
    files = {p.name: p.stat().st_mtime_ns for p in io.shard_files(tmp_path / "out")}
    again = run(JobConfig(**{**config.to_dict(), "batch_size": 3}))  # a runtime setting may change
    assert again.ok and again.resumed == again.shards == 3 and again.rows == first.rows
    assert {p.name: p.stat().st_mtime_ns for p in io.shard_files(tmp_path / "out")} == files

    other = JobConfig(**{**config.to_dict(), "method": "input_x_gradient"})
    with pytest.raises(ValueError, match="different config or input"):
        run(other)
    assert run(other, overwrite=True).resumed == 0
    with JobDir(tmp_path / "out").locked(), pytest.raises(RuntimeError, match="another job"):
        run(other)


def test_a_failed_shard_fails_the_command_and_is_retried_next_run(model_dir, tmp_path, monkeypatch, capsys):
    write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in make_texts(9)])
    argv = ["batch", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"), "--model",
            str(model_dir), "--shard-size", "3", "--device", "cpu", "--no-progress"]
    write = io.write_parquet_atomic

    def flaky_disk(table, path):
        if path.name == "part-00001.parquet":
            raise OSError("disk full")
        write(table, path)

    monkeypatch.setattr(io, "write_parquet_atomic", flaky_disk)
    assert cli.main(argv) == 1
    assert "shard 1 failed: OSError: disk full" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [s["status"] for s in manifest["shards"]] == ["done", "failed", "done"]
    assert manifest["shards"][1]["error"] == "OSError: disk full"
    assert [p.name for p in io.shard_files(tmp_path / "out")] == ["part-00000.parquet", "part-00002.parquet"]

    monkeypatch.setattr(io, "write_parquet_atomic", write)
    assert cli.main(argv) == 0
    assert "3/3 shards done (2 from an earlier run), 9 rows" in capsys.readouterr().out
    assert read_results(tmp_path / "out").column("id").to_pylist() == list(range(9))


def kill_midway_then_resume(tmp_path, rows: list[dict], options: list[str], shard_size: int) -> pa.Table:
    """Run ``batch`` on ``rows`` in a subprocess, SIGKILL it once a shard is complete, rerun the same
    command, and return what the resumed job wrote."""
    write_jsonl(tmp_path / "in.jsonl", rows)
    n = len(rows)
    argv = [sys.executable, "-m", "saliency_fast", "batch", "--input", str(tmp_path / "in.jsonl"),
            "--output", str(tmp_path / "killed"), "--shard-size", str(shard_size), "--device", "cpu", "--no-progress",
            *options]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def complete_shards():
        """The shard files a reader can see now; each must be whole (never partial)."""
        found = []
        for path in io.shard_files(tmp_path / "killed"):
            assert pq.ParquetFile(path).metadata.num_rows == shard_size, path
            found.append(path)
        return found

    job = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not complete_shards():
        assert job.poll() is None, job.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard appeared within 120 s"
        time.sleep(0.005)
    job.send_signal(signal.SIGKILL)
    job.wait()
    job.stderr.close()
    assert 1 <= len(complete_shards()) < n // shard_size, "the kill must land midway"

    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{n // shard_size}/{n // shard_size} shards done" in rerun.stdout
    assert not list((tmp_path / "killed" / "shards").glob(".*"))  # no temporaries left behind
    return read_results(tmp_path / "killed")


def test_sigkill_midway_then_rerun_equals_an_uninterrupted_run(model_dir, tmp_path):
    n, shard_size = 200, 20
    texts = make_texts(n, seed=3)
    texts[7], texts[150] = "", TOO_LONG
    rows = [{"id": f"t{i}", "text": t} for i, t in enumerate(texts)]
    resumed = kill_midway_then_resume(tmp_path, rows, ["--model", str(model_dir), "--batch-size", "20"], shard_size)

    assert resumed.column("id").to_pylist() == [f"t{i}" for i in range(n)]
    errors = resumed.column("error").to_pylist()
    assert [i for i, e in enumerate(errors) if e is not None] == [7, 150]
    config = JobConfig(model=str(model_dir), shard_size=shard_size, batch_size=20, device="cpu")
    assert run_local(config, tmp_path / "in.jsonl", tmp_path / "whole", progress=False).ok
    assert_rows_equal(resumed, read_results(tmp_path / "whole"), atol=1e-6)


def test_ray_engine_on_a_local_cluster_equals_the_local_engine(model_dir, tmp_path):
    ray = pytest.importorskip("ray")
    from saliency_fast.jobs import run_ray

    texts = make_texts(24, seed=4)
    texts[5] = ""
    write_jsonl(tmp_path / "in.jsonl", [{"id": i * 10, "text": t} for i, t in enumerate(texts)])
    config = JobConfig(model=str(model_dir), shard_size=6, batch_size=4, device="cpu")
    local = run_local(config, tmp_path / "in.jsonl", tmp_path / "local", progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_ray(config, tmp_path / "in.jsonl", tmp_path / "ray", actors=2, progress=False)
        assert summary.ok and summary.shards == 4 and summary.row_errors == local.row_errors == 1
        assert_rows_equal(read_results(tmp_path / "ray"), read_results(tmp_path / "local"), atol=1e-5)
        again = run_ray(config, tmp_path / "in.jsonl", tmp_path / "ray", actors=2, progress=False)
        assert again.resumed == 4  # the same manifest and resume rules as the local engine
    finally:
        ray.shutdown()


def test_generation_job_attributes_each_prompt_continuation(tmp_path):
    model, tokenizer = tiny_gpt2()
    model.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    prompts = ["the movie was", "", "i it and not very"]
    config = JobConfig(model=str(tmp_path / "gpt2"), task="generate", target="logprob", max_new_tokens=3,
                       device="cpu")
    table = Attributor(config)({"id": [0, 1, 2], "text": prompts})
    assert table["error"] == [None, "text is empty", None]

    explainer = Explainer.from_pretrained(tmp_path / "gpt2", task="generate", device="cpu")
    for i in (0, 2):
        result = explainer.attribute_generation(prompts[i], max_new_tokens=3, target="logprob")
        assert table["tokens"][i] == result.tokens and table["target"][i] == result.targets
        assert len(table["scores"][i]) == 3  # one row per generated token
        np.testing.assert_allclose(np.array(table["scores"][i], float), result.scores.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(JobConfigError, match="score does not apply to generation"):
        Attributor(JobConfig(**{**config.to_dict(), "score": "prob"}))({"id": [0], "text": ["the movie"]})


def test_batch_without_a_model_is_the_default_zero_shot_sentiment_job(tmp_path, capsys):
    write_jsonl(tmp_path / "in.jsonl", [{"text": "a truly great film"}, {"text": "boring and bad"}])
    argv = ["batch", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"), "--device", "cpu",
            "--no-progress"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["config"]["model"] == "default"
    assert manifest["config"]["task"] == "zero-shot" and manifest["config"]["labels"] == ["positive", "negative"]
    table = read_results(tmp_path / "out")
    assert table.column("error").null_count == 2
    assert all(t in (["positive"], ["negative"]) for t in table.column("target").to_pylist())


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_gpt2")
    model, tokenizer = tiny_gpt2()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_generation_job_forces_each_rows_response(gpt2_dir):
    prompts = ["the movie was", "i it", "a film", "the plot"]
    responses = [" very good", "", " not bad and", None]
    config = JobConfig(model=str(gpt2_dir), task="generate", method="integrated_gradients",
                       method_kwargs={"n_steps": 4}, generated_column="response", device="cpu")
    table = Attributor(config)({"id": [0, 1, 2, 3], "text": prompts, "response": responses})
    # a row whose response is empty or missing fails alone
    assert table["error"] == [None, "response is empty", None, "response is missing (null)"]

    explainer = Explainer.from_pretrained(gpt2_dir, task="generate", device="cpu")
    for i in (0, 2):
        result = explainer.attribute_generation(prompts[i], generated_text=prompts[i] + responses[i],
                                                method="integrated_gradients", n_steps=4)
        assert table["tokens"][i] == result.tokens and table["target"][i] == result.targets
        assert table["target"][i] == responses[i].split()  # each token of the response, forced
        np.testing.assert_allclose(np.array(table["scores"][i], float), result.scores.numpy(), rtol=1e-5, atol=1e-6)

    # both: at most max_new_tokens tokens of each response
    capped = Attributor(JobConfig(**{**config.to_dict(), "max_new_tokens": 2}))(
        {"id": [0], "text": prompts[:1], "response": responses[:1]})
    assert capped["target"][0] == ["very", "good"] and len(capped["scores"][0]) == 2


def test_generation_job_arguments_are_checked_before_any_row_runs(gpt2_dir, model_dir, tmp_path, capsys):
    write_jsonl(tmp_path / "in.jsonl", [{"text": "the movie", "answer": " was good"}])
    argv = ["batch", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"), "--model",
            str(gpt2_dir), "--task", "generate", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 2  # neither flag: the message names both
    err = capsys.readouterr().err
    assert "--max-new-tokens" in err and "--generated-column" in err
    assert cli.main([*argv, "--generated-column", "response"]) == 2
    assert "no column 'response'" in capsys.readouterr().err
    argv[argv.index("--output") + 1] = str(tmp_path / "forced")
    assert cli.main([*argv, "--generated-column", "answer"]) == 0, capsys.readouterr().err
    assert read_results(tmp_path / "forced")["target"].to_pylist() == [["was", "good"]]

    with pytest.raises(JobConfigError, match="apply to generation models only"):
        Attributor(JobConfig(model=str(model_dir), max_new_tokens=2, device="cpu"))({"id": [0], "text": ["a film"]})
    with pytest.raises(ValueError, match="two columns"):
        JobConfig(generated_column="text")
    with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
        JobConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="not in method_kwargs"):
        JobConfig(method_kwargs={"max_new_tokens": 3})


def test_generated_column_job_killed_midway_resumes_with_nothing_lost_or_doubled(gpt2_dir, tmp_path):
    n, shard_size = 120, 15
    prompts = make_texts(n, seed=5)
    responses = [" " + " ".join(make_texts(1, seed=100 + i)[0].split()[:3]) for i in range(n)]
    responses[9] = ""
    rows = [{"id": f"p{i}", "text": p, "response": r} for i, (p, r) in enumerate(zip(prompts, responses))]
    options = ["--model", str(gpt2_dir), "--task", "generate", "--generated-column", "response"]
    resumed = kill_midway_then_resume(tmp_path, rows, options, shard_size)

    assert resumed.column("id").to_pylist() == [f"p{i}" for i in range(n)]
    errors = resumed.column("error").to_pylist()
    assert [i for i, e in enumerate(errors) if e is not None] == [9]
    config = JobConfig(model=str(gpt2_dir), task="generate", generated_column="response", shard_size=shard_size,
                       device="cpu")
    assert run_local(config, tmp_path / "in.jsonl", tmp_path / "whole", progress=False).ok
    assert_rows_equal(resumed, read_results(tmp_path / "whole"), atol=1e-6)
