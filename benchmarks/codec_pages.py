"""Write docs/codecs/<name>.md (one page per registered codec) and docs/codecs/README.md from the
registry: each codec's module docstring (maths, bytes), its declared capabilities, error bound,
options and defaults. Run by update_readme.py; tests/test_docs.py checks the pages are current.

    python benchmarks/codec_pages.py
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "codecs"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def render_pages() -> dict[Path, str]:
    """{path: text} of every generated codec page."""
    from reality_stone.codecs import codec_class, codec_config, encoded_class, registered_codecs

    pages, rows = {}, []
    for name in registered_codecs():
        cls, enc = codec_class(name), encoded_class(name)
        if not cls.__module__.startswith("reality_stone.codecs."):
            continue  # a codec registered by a test or a user, not shipped
        module = sys.modules[cls.__module__]
        cfg = codec_config(name)
        caps = cfg.capabilities
        bpw = cfg.nominal_bits_per_weight()
        rel = "src/" + cls.__module__.replace(".", "/") + ".py"
        lines = [f"# `{name}`", "", f"{cls.description}.", "", f"**When to use it:** {cls.use_when}", "",
                 "| | default config |", "|---|---|",
                 f"| config / encoded type | `{cls.__name__}` / `{enc.__name__}` ([source](../../{rel})) |",
                 f"| calibration | {caps.calibration} |",
                 f"| fused matmul (never builds W) | {_yes(caps.fused_matmul)} |",
                 f"| int8 activations | {_yes(caps.int8_activations)} |",
                 f"| trainable module | {_yes(caps.trainable)} |",
                 f"| nominal bits/weight | {'depends on the weight' if bpw is None else f'{bpw:g}'} |",
                 f"| declared error bound | relative error < {cls.error_bound:g} on `codecs.metrics.reference_weight` |",
                 "", "## Options", "", "| option | default |", "|---|---|"]
        for f in dataclasses.fields(cls):
            lines.append(f"| `{f.name}` | `{getattr(cfg, f.name)!r}` |")
        presets = getattr(cls, "PRESETS", None)
        if presets:
            lines += ["", "Presets (`preset=`): " + ", ".join(f"`{k}`" for k in sorted(presets)) + "."]
        lines += ["", "## How it works and what it stores", "", inspect.cleandoc(module.__doc__ or ""), ""]
        pages[OUT / f"{name}.md"] = "\n".join(lines)
        rows.append(f"| [`{name}`]({name}.md) | {cls.description} | {caps.calibration} | {_yes(caps.fused_matmul)} "
                    f"| {'—' if bpw is None else f'{bpw:g}'} |")
    index = ["# Codecs", "", "Generated from the registry by `benchmarks/codec_pages.py`. Measured quality and speed on "
             "real models: [results](../results.md). Writing one: [adding a codec](adding-a-codec.md).", "",
             "| codec | what it is | calibration | fused matmul | bits/weight (default) |", "|---|---|---|---|---|",
             *rows, ""]
    pages[OUT / "README.md"] = "\n".join(index)
    return pages


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for path, text in render_pages().items():
        path.write_text(text)
        print(path.relative_to(ROOT).as_posix())


if __name__ == "__main__":
    main()
