"""The CLI: --help everywhere, an end-to-end compress → inspect → eval, and the quick demo."""

import json

import pytest
import torch
from typer.testing import CliRunner

from reality_stone.cli import app

runner = CliRunner()


@pytest.mark.parametrize("cmd", [[], ["compress"], ["eval"], ["generate"], ["inspect"], ["demo"], ["codecs"],
                                 ["hyperbolic-demo"]])
def test_help(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_bad_arguments_are_clear():
    r = runner.invoke(app, ["compress", "smollm2", "--codec", "nope", "-o", "x.safetensors"])
    assert r.exit_code != 0 and "unknown codec" in r.output
    r = runner.invoke(app, ["compress", "smollm2", "--opt", "bits", "-o", "x.safetensors"])
    assert r.exit_code != 0 and "key=value" in r.output
    r = runner.invoke(app, ["inspect", "/nonexistent.safetensors"])
    assert r.exit_code == 2 and "no such file" in r.output


def test_compress_inspect_eval_minilm(tmp_path):
    out = tmp_path / "minilm.safetensors"
    r = runner.invoke(app, ["compress", "minilm", "--codec", "rtn", "--opt", "bits=8", "--opt", "group=128",
                            "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert len(summary["layers"]) == 37 and 8 < summary["bits_per_weight"] < 8.5
    r = runner.invoke(app, ["inspect", str(out), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["architecture"] == "BertModel" and len(info["compressed_layers"]) == 37  # 6 × 6 + pooler
    r = runner.invoke(app, ["eval", str(out), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["cosine_mean"] > 0.99 and res["spearman"] > 0.98
    r = runner.invoke(app, ["eval", str(out), "--activations", "int8", "--json"])  # 8-bit codes, int8 activations
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["cosine_mean"] > 0.98
    out4 = tmp_path / "minilm4.safetensors"
    r = runner.invoke(app, ["compress", "minilm", "--codec", "rtn", "--opt", "bits=4", "--opt", "group=64",
                            "-o", str(out4), "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", str(out4), "--activations", "int8", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["activations"] == "int8" and res["cosine_mean"] > 0.85


def test_version_and_codecs_json():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("reality-stone ")
    r = runner.invoke(app, ["codecs", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["codec"]: row for row in json.loads(r.stdout)}
    assert rows["gptq"]["calibration"] == "required" and rows["rtn"]["calibration"] == "unused"
    assert rows["seedbasis"]["calibration"] == "optional" and rows["seedbasis"]["presets"] == ["2.5", "3.5", "4.25"]
    assert rows["seedbasis"]["bits_per_weight"]["preset 3.5"] == 3.5 and rows["rtn"]["bits_per_weight"]["default"] == 4.25
    assert rows["rtn"]["capabilities"]["int8_activations"] and not rows["lowrank"]["capabilities"]["int8_activations"]
    assert rows["rbe"]["capabilities"]["trainable"] and 0 < rows["rtn"]["error_bound"] < 1


@pytest.mark.slow
def test_calibrated_compress_eval_generate_smollm2(tmp_path):
    out = tmp_path / "gptq.safetensors"
    r = runner.invoke(app, ["compress", "smollm2", "--codec", "gptq", "--opt", "bits=4", "--opt", "group=128",
                            "--calibration", "shakespeare", "--calibration-tokens", "1024", "--seq-len", "256",
                            "-o", str(out), "--json", "--threads", "2"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["calibration"]["mode"] == "sequential" and summary["calibration"]["tokens"] == 1024
    assert 4.2 < summary["bits_per_weight"] < 4.35 and 0 < summary["output_error"] < 0.2
    assert all(layer["codec"] == "gptq" for layer in summary["layers"])
    # self-contained: the tokenizer travels in the file; --base scores the original in the same run
    r = runner.invoke(app, ["eval", str(out), "--base", "source", "--text", "news", "--tokens", "300", "--no-speed",
                            "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["texts"]["news"]
    assert res["tokens"] == 299 and 1.0 < res["ppl_ratio"] < 2.0 and 0 < res["kl"] < 0.6 and 0.6 < res["top1"] < 1
    r = runner.invoke(app, ["generate", str(out), "What is the capital of France?", "--max-new-tokens", "8", "--json"])
    assert r.exit_code == 0, r.output
    gen = json.loads(r.stdout)
    assert 1 <= gen["new_tokens"] <= 8 and isinstance(gen["text"], str) and gen["text"].strip()
    assert gen["loop"] == "reality_stone Decoder"
    # the lean loop and transformers' generate give the same greedy text
    r = runner.invoke(app, ["generate", str(out), "What is the capital of France?", "--max-new-tokens", "8", "--json",
                            "--transformers"])
    assert r.exit_code == 0, r.output
    hf = json.loads(r.stdout)
    assert hf["loop"] == "transformers generate" and hf["text"] == gen["text"]


@pytest.mark.slow  # multi-second integration test: `make test` runs it, `make test-fast` does not
def test_calibration_bad_input_is_clear(tmp_path):
    out = tmp_path / "x.safetensors"
    cases = [
        (["--codec", "rtn", "--calibration", "shakespeare"], "do not use it"),
        (["--codec", "gptq"], "need calibration"),
        (["--codec", "seedbasis", "--preset", "9"], "unknown preset"),
        (["--codec", "seedbasis", "--calibration", str(tmp_path / "missing.txt")], "no such file"),
        (["--codec", "seedbasis", "--tune-epochs", "1"], "give --calibration"),
        (["--codec", "seedbasis", "--mixed"], "give calibration= (--calibration)"),
        (["--codec", "lowrank", "--mixed", "--calibration", "shakespeare"], "no ladder"),
    ]
    for args, msg in cases:
        r = runner.invoke(app, ["compress", "smollm2", *args, "-o", str(out)])
        assert r.exit_code != 0 and msg in " ".join(r.output.split()), (args, r.output)
    short = tmp_path / "short.txt"
    short.write_text("Too short to calibrate on.")
    r = runner.invoke(app, ["compress", "smollm2", "--codec", "gptq", "--calibration", str(short), "-o", str(out)])
    assert r.exit_code == 2 and "fewer than seq_len=512" in " ".join(r.output.split())
    assert not out.exists()


@pytest.mark.slow  # multi-second integration test: `make test` runs it, `make test-fast` does not
def test_hf_model_folder_calibrated_with_own_text(tmp_path):
    from reality_stone.evaluation.loaders import load_tokenizer, tiny_llama

    tok = load_tokenizer("smollm2")
    model = tiny_llama()
    model.resize_token_embeddings(len(tok))
    folder = tmp_path / "my-model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    text = tmp_path / "mine.txt"
    from reality_stone.data.text import evaluation_text

    text.write_text(evaluation_text("shakespeare")[:20000])
    out = tmp_path / "my-model.rs.safetensors"
    r = runner.invoke(app, ["compress", str(folder), "--codec", "seedbasis", "--preset", "4.25", "--calibration",
                            str(text), "--calibration-tokens", "512", "--seq-len", "128", "--one-pass", "-o", str(out),
                            "--tune-epochs", "2", "--mixed", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["calibration"]["mode"] == "one-pass" and summary["calibration"]["sequences"] == 4
    alloc = summary["calibration"]["allocation"]  # --mixed: the 4.25 budget spread over the 14 layers
    assert sum(alloc["layers_per_bits"].values()) == 14 and alloc["nominal_bits_per_weight"] <= 4.25
    assert len({round(x["bits_per_weight"], 3) for x in summary["layers"]}) > 1
    tuning = summary["calibration"]["tuning"]  # 3 sequences trained on, 1 held out
    assert tuning["heldout_sequences"] == 1 and tuning["epochs"] == 2 and tuning["parameters"] == 5 * 64
    # the file holds the tuned gains (the random model's are all 1 before)
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        gains = [f.get_tensor(k) for k in f.keys() if k.endswith("layernorm.weight")]
    assert gains and (tuning["kept_epoch"] == 0) == all(bool((g == 1).all()) for g in gains)
    r = runner.invoke(app, ["eval", str(out), "--text-file", str(text), "--base", str(folder), "--tokens", "200",
                            "--no-speed", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["texts"]["mine.txt"]
    assert res["tokens"] == 199 and res["kl"] > -1e-5 and 0 <= res["top1"] <= 1  # KL ≥ 0 up to float32 rounding


def test_a_checkpoint_without_config_cannot_be_calibrated(tmp_path):
    from safetensors.torch import save_file

    ckpt = tmp_path / "w.safetensors"
    save_file({"layer.weight": torch.randn(64, 64)}, str(ckpt))
    r = runner.invoke(app, ["compress", str(ckpt), "--codec", "gptq", "--calibration", "shakespeare",
                            "-o", str(tmp_path / "o.safetensors")])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "calibration runs the model, which needs its architecture" in out
    assert "a Hugging Face model folder or a .gguf file" in out


@pytest.mark.slow  # two calibrated compressions of a tiny model with SmolLM2's vocabulary (~20 s)
def test_a_model_folder_streamed_block_by_block_gives_the_in_memory_file(tmp_path):
    from reality_stone.evaluation.loaders import load_tokenizer, tiny_llama

    tok = load_tokenizer("smollm2")
    model = tiny_llama()
    model.resize_token_embeddings(len(tok))
    folder = tmp_path / "my-model"
    model.save_pretrained(folder, max_shard_size="5MB")
    tok.save_pretrained(folder)
    args = ["--codec", "gptq", "--opt", "bits=4", "--opt", "group=32", "--calibration", "news",
            "--calibration-tokens", "512", "--seq-len", "128", "--json"]
    whole, streamed = tmp_path / "whole.safetensors", tmp_path / "streamed.safetensors"
    r = runner.invoke(app, ["compress", str(folder), *args, "-o", str(whole)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["compress", str(folder), *args, "--stream", "--max-memory", "0", "-o", str(streamed)])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["blocks"] == 2 and summary["report"]["calibration"]["hidden_states"] == "file"
    assert whole.read_bytes() == streamed.read_bytes()
    r = runner.invoke(app, ["compress", str(folder), *args, "--stream", "--max-memory", "lots", "-o", str(streamed)])
    assert r.exit_code == 2 and "--max-memory" in r.output


@pytest.mark.slow
def test_demo_quick_end_to_end():
    r = runner.invoke(app, ["demo", "--quick", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["label"]: row for row in json.loads(r.stdout)["rows"]}
    dense = rows["fp32 (dense)"]
    assert 5 < dense["ppl_shakespeare"] < 60 and dense["bits_per_weight"] == 32.0
    four = rows["HQQ 4-bit g64"]
    assert 4.4 < four["bits_per_weight"] < 4.6
    assert dense["ppl_shakespeare"] < four["ppl_shakespeare"] < 2 * dense["ppl_shakespeare"]
    aware = rows["seedbasis 3.5 data-aware"]
    assert 3.4 < aware["bits_per_weight"] < 3.6
    assert aware["ppl_shakespeare"] < rows["HQQ 3-bit g64"]["ppl_shakespeare"]  # the data-aware codec pays off
    for row in rows.values():  # scored from the saved file, in a fresh process
        assert row["file_bytes"] > 0 and row["peak_rss_bytes"] > 0 and row["tokens_scored"] > 0
    assert four["file_bytes"] < 0.4 * dense["file_bytes"]


@pytest.mark.slow  # dequantises every tensor of SmolLM2's GGUF
def test_compress_a_gguf_file_streams_it(tmp_path):
    from reality_stone.data.pretrained import smollm2_gguf

    out = tmp_path / "s.safetensors"
    res = runner.invoke(app, ["compress", str(smollm2_gguf()), "--stream", "-o", str(out), "--opt", "bits=4", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["compressed_layers"] == 210 and out.is_file()  # 30 blocks × 7; the tied LM head stays dense
    res = runner.invoke(app, ["eval", str(out), "--tokens", "64", "--text", "news", "--no-speed", "--json"])
    assert res.exit_code == 0, res.output
    assert 20 < json.loads(res.output[res.output.index("{"):])["ppl_news"] < 200  # a working int4 model


def test_compress_a_checkpoint_folder_streams_it(tmp_path):
    from reality_stone.data.pretrained import minilm_dir

    out = tmp_path / "m.safetensors"
    res = runner.invoke(app, ["compress", str(minilm_dir()), "--stream", "-o", str(out), "--opt", "bits=4", "--json",
                              "--skip", "pooler.*"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["compressed_layers"] == 36 and out.is_file()  # 6 blocks × 6 Linears; pooler kept dense
    res = runner.invoke(app, ["compress", str(tmp_path / "missing.safetensors"), "-o", str(out)])
    assert res.exit_code != 0
