"""The ``reality-stone`` command line (typer + rich)."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

app = typer.Typer(
    help="Reality Stone: exact hyperbolic layers and geometric weight compression for PyTorch.",
    no_args_is_help=True,
    add_completion=False,
)
# Tables are wide; a pipe or CI log gets 140 columns instead of rich's default 80.
console = Console(width=None if sys.stdout.isatty() else 140)


@app.callback()
def main() -> None:
    """Reality Stone command line."""


@app.command("hyperbolic-demo")
def hyperbolic_demo(
    dims: str = typer.Option("2,5", help="comma-separated embedding dimensions"),
    epochs: int = typer.Option(100, min=1, help="training epochs per embedding"),
    quick: bool = typer.Option(False, "--quick", help="small subtree (canids) and few epochs, for CI"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON instead of a table"),
) -> None:
    """Embed the WordNet mammal hierarchy in the Poincaré ball and in Euclidean space; print the table.

    Reconstruction task of Nickel & Kiela (2017): mean rank (1 is perfect) and MAP of each
    node's ancestors/descendants among all nodes, ordered by embedding distance.
    """
    from rich.progress import Progress

    from reality_stone.data.wordnet import wordnet_closure
    from reality_stone.hierarchy import embed_hierarchy

    try:
        dim_list = [int(d) for d in dims.split(",") if d.strip()]
    except ValueError:
        raise typer.BadParameter(f"--dims must be comma-separated integers, got {dims!r}") from None
    if not dim_list or min(dim_list) < 1:
        raise typer.BadParameter("--dims needs at least one positive dimension")
    try:
        hierarchy = wordnet_closure("canine", sense=2) if quick else wordnet_closure("mammal")
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if quick:
        epochs = min(epochs, 30)
    batch = 32 if quick else 128
    rows = []
    with Progress(console=console, transient=True, disable=as_json) as progress:
        task = progress.add_task("embedding", total=2 * len(dim_list))
        for dim in dim_list:
            for geometry in ("poincare", "euclidean"):
                progress.update(task, description=f"{geometry} d={dim}")
                t0 = time.perf_counter()
                r = embed_hierarchy(hierarchy, dim, geometry, epochs=epochs, batch_size=batch, seed=0)
                rows.append(
                    dict(geometry=geometry, dim=dim, mean_rank=r.mean_rank, map=r.map,
                         loss=r.final_loss, seconds=time.perf_counter() - t0)
                )
                progress.advance(task)
    meta = dict(hierarchy="canids (canine.n.02)" if quick else "mammal.n.01", nodes=hierarchy.num_nodes,
                closure_edges=len(hierarchy.edges), epochs=epochs)
    if as_json:
        print(json.dumps(dict(meta, results=rows), indent=2))
        return
    table = Table(title=f"WordNet {meta['hierarchy']} closure: {meta['nodes']} nodes, "
                        f"{meta['closure_edges']} edges, {epochs} epochs")
    for col in ("geometry", "dim", "mean rank ↓", "MAP ↑", "loss", "seconds"):
        table.add_column(col, justify="right" if col != "geometry" else "left")
    for r in rows:
        table.add_row(r["geometry"], str(r["dim"]), f"{r['mean_rank']:.2f}", f"{r['map']:.3f}",
                      f"{r['loss']:.3f}", f"{r['seconds']:.1f}")
    console.print(table)


# ----------------------------------------------------------------------------- compression


def _parse_opts(opts: list[str]) -> dict:
    out = {}
    for item in opts:
        if "=" not in item:
            raise typer.BadParameter(f"--opt takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _codec(codec: str, opts: list[str]):
    from reality_stone.codecs import codec_config

    try:
        return codec_config(codec, **_parse_opts(opts))
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(str(exc)) from None


def _print_rows(rows: list[dict], title: str, columns: list[tuple[str, str, str]]) -> None:
    table = Table(title=title)
    for header, _, _ in columns:
        table.add_column(header, justify="left" if header in ("configuration", "layer", "codec") else "right")
    for r in rows:
        table.add_row(*[(fmt.format(r[key]) if r.get(key) is not None else "—") for _, key, fmt in columns])
    console.print(table)


def _no_grad(fn):
    """Run a command under torch.no_grad() without touching the global grad mode."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper


@app.command("compress")
@_no_grad
def compress_cmd(
    model: str = typer.Argument(..., help="smollm2 (default LM), minilm, or a safetensors checkpoint file/folder "
                                          "(streamed tensor by tensor)"),
    codec: str = typer.Option("rtn", help="codec name (see `reality-stone codecs`)"),
    opt: list[str] = typer.Option([], "--opt", help="codec option key=value, repeatable (e.g. --opt bits=4)"),
    output: Path = typer.Option(..., "-o", "--output", help="output .safetensors file"),
    skip: list[str] = typer.Option([], "--skip", help="glob of layer names to keep dense, repeatable"),
    workers: int = typer.Option(1, min=1, help="checkpoints: parallel Ray workers (needs the distributed extra)"),
    ray_address: str = typer.Option(None, "--ray-address", help="checkpoints: Ray cluster address (default: local)"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="checkpoints: continue an interrupted run"),
    as_json: bool = typer.Option(False, "--json", help="print the per-layer report as JSON"),
) -> None:
    """Compress every nn.Linear of MODEL with CODEC and save a single .safetensors file."""

    from reality_stone.models import compress, save
    from reality_stone.models.loaders import load_model

    if Path(model).exists():
        _compress_checkpoint(Path(model), _codec(codec, opt), output, skip, workers, ray_address, resume, as_json)
        return
    config = _codec(codec, opt)
    try:
        loaded = load_model(model)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    report = compress(loaded.model, config, skip=tuple(skip), progress=not as_json)
    save(loaded.model, output, source=model)
    summary = report.to_dict() | {"output": str(output), "file_bytes": output.stat().st_size}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    _print_rows([r.__dict__ | {"shape_s": f"{r.shape[0]}×{r.shape[1]}"} for r in report.layers][:12] +
                ([{"name": f"… {len(report.layers) - 12} more"}] if len(report.layers) > 12 else []),
                f"{model}: {len(report.layers)} layers compressed with {codec}",
                [("layer", "name", "{}"), ("shape", "shape_s", "{}"), ("bits/weight", "bits_per_weight", "{:.3f}"),
                 ("rel. error", "rel_error", "{:.4f}"), ("SQNR dB", "sqnr_db", "{:.2f}"), ("seconds", "seconds", "{:.2f}")])
    console.print(f"total: {report.bits_per_weight:.3f} bits/weight over compressed layers, "
                  f"{report.dense_bytes_fp32 / report.compressed_bytes:.2f}× smaller than fp32; "
                  f"kept dense: {', '.join(report.skipped) or 'none'}; file {output} ({output.stat().st_size / 1e6:.1f} MB)")


def _compress_checkpoint(src: Path, config, output: Path, skip, workers, ray_address, resume, as_json) -> None:
    import fnmatch

    from reality_stone.models.streaming import compress_checkpoint, default_selector

    def select(name, shape):
        return default_selector(name, shape) and not any(fnmatch.fnmatch(name[: -len(".weight")], p) for p in skip)

    try:
        summary = compress_checkpoint(src, output, config, select=select, workers=workers, ray_address=ray_address,
                                      resume=resume, progress=not as_json)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc)) from None
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    _print_rows([summary], f"{src}: streamed with {config.codec_name}",
                [("tensors", "tensors", "{}"), ("compressed layers", "compressed_layers", "{}"),
                 ("resumed", "resumed_tensors", "{}"), ("workers", "workers", "{}"), ("seconds", "seconds", "{:.1f}")])
    console.print(f"{summary['input_bytes'] / 1e6:.1f} MB -> {summary['output_bytes'] / 1e6:.1f} MB: {output}")


@app.command("eval")
@_no_grad
def eval_cmd(
    path: Path = typer.Argument(..., help="a file written by `reality-stone compress`"),
    text: list[str] = typer.Option(["shakespeare", "news"], "--text", help="held-out text: shakespeare or news"),
    tokens: int = typer.Option(2048, min=16, help="tokens of each text to score"),
    context: int = typer.Option(512, min=8),
    stride: int = typer.Option(256, min=1),
    activations: str = typer.Option("fp32", help="fp32 (exact) or int8 (quantised per group on the fly; "
                                                  "≤4-bit group codecs, AVX-512 VNNI kernel)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Perplexity (causal LM) or embedding check (encoder) of a compressed model file, plus speed and memory."""

    from reality_stone.models import load, read_metadata
    from reality_stone.models.evaluate import model_nbytes, peak_rss_bytes, perplexity, tokens_per_second
    from reality_stone.models.loaders import load_tokenizer
    from reality_stone.nn import set_activations

    try:
        meta = read_metadata(path)
        model = load(path)
        if activations != "fp32":
            set_activations(model, activations)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    source = meta["source"]
    result = dict(file=str(path), source=source, activations=activations, weight_bytes=model_nbytes(model))
    if source == "smollm2":
        from reality_stone.data.text import evaluation_text

        tok = load_tokenizer(source)
        for name in text:
            try:
                result[f"ppl_{name}"], result["tokens_scored"] = perplexity(
                    model, tok, evaluation_text(name), context=context, stride=stride, max_tokens=tokens)
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
        result["tokens_per_s"] = tokens_per_second(model, tok)
    elif source == "minilm":
        from reality_stone.models.evaluate import embedding_fidelity, lee_sentences
        from reality_stone.models.loaders import load_minilm

        ref = load_minilm()
        result.update(embedding_fidelity(ref.model, model, ref.tokenizer, lee_sentences(64)))
    else:
        console.print(f"[red]error:[/red] {path} does not say which model it came from; nothing to evaluate against")
        raise typer.Exit(2)
    result["peak_rss_bytes"] = peak_rss_bytes()
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{path.name} ({source})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)


@app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="a compressed model file"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show a compressed model file's format, architecture and per-layer codecs and sizes."""
    from reality_stone.models import read_metadata

    try:
        meta = read_metadata(path)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    arch = meta["architecture"]
    info = dict(file=str(path), file_bytes=path.stat().st_size, format_version=meta["format_version"],
                source=meta["source"], architecture=arch["class"] if arch else None,
                compressed_layers=meta["compressed"], dense_tensors=[t for t in meta["tensors"] if not t.endswith(".__encoded__")],
                aliases=meta["aliases"])
    if as_json:
        print(json.dumps(info, indent=2))
        return
    console.print(f"{path}: format v{info['format_version']}, {info['architecture'] or 'plain nn.Module'}, "
                  f"source={info['source']}, {info['file_bytes'] / 1e6:.2f} MB, "
                  f"{len(info['dense_tensors'])} dense tensors, aliases {info['aliases'] or 'none'}")
    rows = [dict(name=k, codec=v["codec"], shape=f"{v['shape'][0]}×{v['shape'][1]}", bpw=v["bits_per_weight"])
            for k, v in info["compressed_layers"].items()]
    _print_rows(rows, f"{len(rows)} compressed layers",
                [("layer", "name", "{}"), ("codec", "codec", "{}"), ("shape", "shape", "{}"), ("bits/weight", "bpw", "{:.3f}")])


@app.command("codecs")
def codecs_cmd() -> None:
    """List the registered codecs and their options."""
    import dataclasses

    from reality_stone.codecs.base import _REGISTRY

    table = Table(title="registered codecs")
    table.add_column("codec")
    table.add_column("options (defaults)")
    for name in sorted(_REGISTRY):
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(_REGISTRY[name]))
        table.add_row(name, fields)
    console.print(table)


@app.command()
@_no_grad
def demo(
    quick: bool = typer.Option(False, "--quick", help="fewer tokens, no speed measurement (CI)"),
    tokens: int = typer.Option(2048, min=64, help="tokens of each held-out text to score"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Compress SmolLM2-135M at ~4 and ~3.5 bits per weight and one extreme ratio; evaluate; print the table."""

    from reality_stone.models.demo import demo_specs
    from reality_stone.models.experiment import evaluate_specs
    from reality_stone.models.loaders import load_smollm2

    loaded = load_smollm2()
    specs = demo_specs()
    if quick:
        tokens = min(tokens, 512)
    with Progress(console=console, transient=True, disable=as_json) as progress:
        task = progress.add_task("evaluating", total=len(specs))

        def step(label):
            progress.update(task, description=label)
            progress.advance(task)

        # the data-aware row calibrates on the bundled calibration plays (never evaluated on)
        rows = evaluate_specs(loaded, specs, max_tokens=tokens, speed=not quick, progress=step,
                              calibration="shakespeare", calibration_tokens=1024 if quick else 4096)
    for r in rows:
        r["weight_mb"] = r["weight_bytes"] / 1e6
    if as_json:
        print(json.dumps(dict(model="SmolLM2-135M-Instruct", tokens=tokens, rows=rows), indent=2))
        return
    _print_rows(rows, f"SmolLM2-135M-Instruct: perplexity on {tokens} held-out tokens (context 512)",
                [("configuration", "label", "{}"), ("bits/weight", "bits_per_weight", "{:.2f}"),
                 ("weights MB", "weight_mb", "{:.1f}"), ("ppl Hamlet", "ppl_shakespeare", "{:.2f}"),
                 ("ppl news", "ppl_news", "{:.2f}"), ("tokens/s", "tokens_per_s", "{:.1f}"),
                 ("compress s", "compress_seconds", "{:.1f}")])
    console.print("bits/weight counts every stored byte of the compressed Linear layers; embeddings and norms stay "
                  "fp32. SmolLM2's weights are Q4_1 (4-bit, group 32) already: see README.")


if __name__ == "__main__":  # `python -m reality_stone.cli` (used by benchmarks for a fresh process)
    app()
