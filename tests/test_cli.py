"""The CLI: --help everywhere, an end-to-end compress → inspect → eval, and the quick demo."""

import json

import pytest
from typer.testing import CliRunner

from reality_stone.cli import app

runner = CliRunner()


@pytest.mark.parametrize("cmd", [[], ["compress"], ["eval"], ["inspect"], ["demo"], ["codecs"], ["hyperbolic-demo"]])
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
    r = runner.invoke(app, ["eval", str(out), "--activations", "int8"])  # 8-bit codes: no int8-activation path
    assert r.exit_code == 2 and "activations='int8'" in r.output
    out4 = tmp_path / "minilm4.safetensors"
    r = runner.invoke(app, ["compress", "minilm", "--codec", "rtn", "--opt", "bits=4", "--opt", "group=64",
                            "-o", str(out4), "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", str(out4), "--activations", "int8", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["activations"] == "int8" and res["cosine_mean"] > 0.85


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


def test_compress_a_checkpoint_folder_streams_it(tmp_path):
    from reality_stone.data.pretrained import minilm_dir

    out = tmp_path / "m.safetensors"
    res = runner.invoke(app, ["compress", str(minilm_dir()), "-o", str(out), "--opt", "bits=4", "--json",
                              "--skip", "pooler.*"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["compressed_layers"] == 36 and out.is_file()  # 6 blocks × 6 Linears; pooler kept dense
    res = runner.invoke(app, ["compress", str(tmp_path / "missing.safetensors"), "-o", str(out)])
    assert res.exit_code != 0
