"""``saliency-fast explain``: the default offline MiniLM demo, generation and classification models
saved to disk, and bad arguments (one-line errors, exit status 2, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import transformers

from saliency_fast.cli import main
from saliency_fast.result import load
from tests.tiny_models import bert_tokenizer, tiny_bert, tiny_gpt2

DEMO = "This movie was incredibly bad, I hated every second of it."
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    gpt2, word_tokenizer = tiny_gpt2()
    gpt2.save_pretrained(root / "gpt2")
    word_tokenizer.save_pretrained(root / "gpt2")
    tiny_bert("classification").save_pretrained(root / "bert")
    bert_tokenizer().save_pretrained(root / "bert")
    # a model with no word-embedding table (image patches), with a text tokenizer beside it
    vit = transformers.ViTModel(transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                      intermediate_size=16, image_size=8, patch_size=4))
    vit.save_pretrained(root / "vit")
    bert_tokenizer().save_pretrained(root / "vit")
    (root / "file.bin").write_bytes(b"x")
    return root


def run_cli(capsys, *argv):
    code = main(["explain", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("saliency-fast explain: error: "), err
    for fragment in fragments:
        assert fragment in last, (fragment, last)


def test_default_model_explains_the_demo_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_cli(capsys, DEMO, "--out", tmp_path)
    assert code == 0, err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["attribution.html", "attribution.json", "attribution.png"]
    result = load(tmp_path / "attribution.json")
    assert result.metadata["task"] == "zero-shot" and result.targets == ["negative"]
    top = [token for token, _ in result.top_k(3)[0]]
    assert "bad" in top and "hated" in top, top
    assert "hated" in out and "top" in out and "wrote" in out
    html = (tmp_path / "attribution.html").read_text(encoding="utf-8")
    assert "hated" in html and "<script" not in html
    assert (tmp_path / "attribution.png").read_bytes()[:4] == b"\x89PNG"


def test_generation_model(tmp_path, capsys, model_dirs):
    code, out, err = run_cli(capsys, "the movie was", "--model", model_dirs / "gpt2", "--max-new-tokens", 3,
                             "--target", "logprob", "--out", tmp_path)
    assert code == 0, err
    result = load(tmp_path / "attribution.json")
    assert result.metadata["task"] == "generate" and result.metadata["target"] == "logprob"
    n_prompt = result.metadata["n_prompt_tokens"]
    assert result.scores.shape == (3, n_prompt + 3)
    assert result.mask.sum(1).tolist() == [n_prompt, n_prompt + 1, n_prompt + 2]  # each row: its prefix
    assert "<table>" in (tmp_path / "attribution.html").read_text(encoding="utf-8")
    assert "┏" in out  # the prompt x generated table


def test_generation_forced_continuation(tmp_path, capsys, model_dirs):
    code, _, err = run_cli(capsys, "the movie", "--model", model_dirs / "gpt2", "--generated-text",
                           "the movie was good", "--out", tmp_path)
    assert code == 0, err
    result = load(tmp_path / "attribution.json")
    assert result.targets == ["was", "good"] and result.metadata["forced"] is True


def test_classification_with_path_method(tmp_path, capsys, model_dirs):
    code, _, err = run_cli(capsys, "a good film", "--model", model_dirs / "bert", "--method", "integrated_gradients",
                           "--n-steps", 8, "--target", 1, "--aggregate", "sum", "--out", tmp_path)
    assert code == 0, err
    data = json.loads((tmp_path / "attribution.json").read_text())
    assert data["metadata"]["n_steps"] == 8 and data["metadata"]["aggregate"] == "sum"
    assert data["target_ids"] == [1]


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--model", "/no/such/model"], ["/no/such/model", "no such directory"]),
        (["--model", "{dirs}/file.bin"], ["is a file"]),
        (["--task", "generate"], ["--task generate needs --model"]),
        (["--model", "{dirs}/bert", "--method", "magic"], ["method must be one of", "magic"]),
        (["--model", "{dirs}/bert", "--max-new-tokens", "3"], ["--max-new-tokens applies only to --task generate"]),
        (["--model", "{dirs}/bert", "--n-steps", "4"], ["n_steps"]),
        (["--model", "{dirs}/bert", "--target", "7"], ["7"]),
        (["--model", "{dirs}/gpt2", "--score", "prob"], ["--score does not apply"]),
        (["--model", "{dirs}/gpt2", "--target", "banana", "--max-new-tokens", "2"], ["target must be one of", "banana"]),
        (["--model", "{dirs}/vit", "--task", "similarity", "--reference", "x"], ["get_input_embeddings", "nn.Embedding"]),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, model_dirs, argv, fragments):
    argv = [a.format(dirs=model_dirs) for a in argv]
    code, _, err = run_cli(capsys, "some text", *argv, "--out", tmp_path / "out")
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "out" / "attribution.json").exists()


@pytest.mark.parametrize("argv", [["--n-steps", "0"], ["--labels", "onlyone"], ["--task", "dance"]])
def test_argparse_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "text", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("saliency-fast explain: error:")


def test_console_script_error_in_a_fresh_process(tmp_path):
    """The module entry point: a missing model is one line on stderr, status 2, nothing written."""
    proc = subprocess.run(
        [sys.executable, "-m", "saliency_fast", "explain", "hello", "--model", str(tmp_path / "missing"),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"saliency-fast explain: error: --model '{tmp_path / 'missing'}': no such directory"]
    assert not (tmp_path / "out").exists()

