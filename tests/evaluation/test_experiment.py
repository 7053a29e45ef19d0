"""The one quality path: each configuration is saved and its file scored in a fresh process."""

import pytest

from reality_stone.codecs import codec_config
from reality_stone.evaluation.experiment import Spec, evaluate_specs
from reality_stone.evaluation.loaders import load_minilm


@pytest.mark.slow  # two fresh processes that each load MiniLM twice
def test_encoder_rows_come_from_the_saved_file():
    rows = evaluate_specs(load_minilm(), [Spec("fp16", dense_dtype="fp16"),
                                          Spec("RTN int4 g128", codec_config("rtn", bits=4, group=128))])
    fp16, int4 = rows
    assert fp16["bits_per_weight"] == 16.0 and fp16["cosine_mean"] > 0.9999  # rounding to fp16 changes nothing
    assert 4.2 < int4["bits_per_weight"] < 4.3 and 0.85 < int4["cosine_mean"] < 0.99 and int4["spearman"] > 0.9
    # each file holds its weights as stored (fp16 tensors; compressed layers as codes) plus the tokenizer
    for row in rows:
        assert abs(row["file_bytes"] - row["weight_bytes"]) < 3e6, row
    assert fp16["file_bytes"] < 0.55 * fp16["dense_weight_bytes"]
    assert set(int4["layer_rel_error"]) and all(0 < e < 0.2 for e in int4["layer_rel_error"].values())
    assert all(r["peak_rss_bytes"] > 0 for r in rows)  # measured in the scoring process
