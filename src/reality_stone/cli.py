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

from reality_stone.models.selection import DEFAULT_SKIP

app = typer.Typer(
    help="Reality Stone: exact hyperbolic layers and geometric weight compression for PyTorch.",
    no_args_is_help=True,
    add_completion=False,
)
# Tables are wide; a pipe or CI log gets 140 columns instead of rich's default 80.
console = Console(width=None if sys.stdout.isatty() else 140)


def _version(value: bool) -> None:
    if value:
        from reality_stone import __version__

        print(f"reality-stone {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    """Reality Stone command line."""


THREADS = typer.Option(None, "--threads", min=1, help="CPU threads (default: the cores this process may use — "
                                                      "affinity, cgroup quota and OMP_NUM_THREADS respected)")


def _threads(n: int | None) -> int:
    from reality_stone.threads import set_threads

    return set_threads(n)


def _fail(message: str) -> None:
    """Print a clear error (no traceback) and exit with status 2."""
    console.print(f"[red]error:[/red] {message}", soft_wrap=True)
    raise typer.Exit(2)


@app.command("embed")
def embed_cmd(
    source: str = typer.Argument(..., help="an edge file (child<TAB or comma>parent per line) or wordnet:ROOT "
                                           "(a noun lemma or synset: wordnet:mammal.n.01, wordnet:entity)"),
    dim: int = typer.Option(10, help="embedding dimension (>= 2)"),
    geometry: str = typer.Option("poincare", help="poincare, lorentz or euclidean"),
    epochs: int = typer.Option(300, min=1, help="(the defaults are `hierarchy.embed`'s)"),
    batch_size: int = typer.Option(512, min=1),
    negatives: int = typer.Option(50, min=1),
    hard_negatives: int = typer.Option(None, min=0, help="how many of the negatives are drawn two closure hops from "
                                       "the anchor (cousins) instead of uniformly [default: a fifth with the random "
                                       "start on the Poincaré ball, 0 otherwise]"),
    lr: float = typer.Option(None, help="Adam step [default: 0.5 per epoch with the tree start, 0.05 with the "
                             "random one]"),
    burn_in: int = typer.Option(None, min=0, help="epochs at lr/10 first [default: 0 with the tree start, 20 with "
                                "the random one]"),
    init: str = typer.Option(None, help="tree (a construction from the hierarchy; the ball's default) or random "
                             "(the paper's start; the default elsewhere)"),
    both_directions: bool = typer.Option(None, "--both-directions/--directed", help="train both directions of each "
                                         "edge, or descendant → ancestor only [default: directed with the tree "
                                         "start]", show_default=False),
    patience: int = typer.Option(10, min=1, help="with the tree start: stop after this many epochs without a better "
                                 "sampled MAP (the best epoch is returned)"),
    schedule: str = typer.Option("constant", help="learning rate after the burn-in: constant, or linear (decays to 0 "
                                 "at the last epoch)"),
    curvature: float = typer.Option(1.0, "--c", help="curvature magnitude c > 0"),
    seed: int = typer.Option(0),
    holdout: float = typer.Option(0.0, help="share of closure edges held out for link prediction"),
    instances: bool = typer.Option(False, "--instances", help="WordNet: follow instance hypernyms too "
                                   "(wordnet:entity --instances = all 82,115 nouns)"),
    out: Path = typer.Option(None, "--out", help="write the embedding (safetensors: table + node names)"),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="checkpoint file: written every 10 epochs, resumed "
                                    "when it exists"),
    plot: Path = typer.Option(None, "--plot", help="2-d only: draw the embedding to this PNG"),
    max_minutes: float = typer.Option(None, "--max-minutes", help="stop training after the first epoch past this"),
    as_json: bool = typer.Option(False, "--json"),
    threads: int = THREADS,
) -> None:
    """Embed a hierarchy (its transitive closure) and report reconstruction (and link prediction)."""
    import torch

    from reality_stone.hierarchy import GEOMETRIES, SCHEDULES, embed

    _threads(threads)
    if geometry not in GEOMETRIES:
        _fail(f"--geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")
    if schedule not in SCHEDULES:
        _fail(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if dim < 2:
        _fail(f"--dim must be at least 2, got {dim}")
    if not curvature > 0:
        _fail(f"--c must be positive, got {curvature}")
    if plot is not None and dim != 2:
        _fail("--plot draws 2-d embeddings only (use --dim 2)")
    try:
        hierarchy, label = _hierarchy(source, instances)
        t0 = time.perf_counter()
        r = embed(hierarchy, dim, geometry, epochs=epochs, batch_size=batch_size, negatives=negatives,
                  hard_negatives=hard_negatives, lr=lr, init=init, patience=patience,
                  directed=None if both_directions is None else not both_directions,
                  burn_in=burn_in, schedule=schedule, c=curvature, seed=seed, holdout=holdout, checkpoint=checkpoint,
                  max_seconds=None if max_minutes is None else 60 * max_minutes, progress=not as_json)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    row = dict(hierarchy=label, nodes=hierarchy.num_nodes, closure_edges=len(hierarchy.edges), geometry=geometry,
               dim=dim, epochs=r.epochs, best_epoch=r.best_epoch, mean_rank=r.mean_rank, map=r.map,
               mean_rank_both=r.mean_rank_both, map_both=r.map_both, link_mean_rank=r.link_mean_rank,
               link_map=r.link_map, loss=r.final_loss, seconds=time.perf_counter() - t0, threads=torch.get_num_threads())
    if out is not None:
        _write_embedding(out, r.embedding, hierarchy, row)
        row["out"] = str(out)
    if plot is not None:
        _plot_embedding(plot, r.embedding, hierarchy, geometry, curvature, row)
        row["plot"] = str(plot)
    if as_json:
        print(json.dumps(row, indent=2))
        return
    _print_rows([row], f"{label}: {row['nodes']} nodes, {row['closure_edges']} closure edges",
                [("geometry", "geometry", "{}"), ("dim", "dim", "{}"), ("epochs", "epochs", "{}"),
                 ("best epoch", "best_epoch", "{}"), ("mean rank ↓", "mean_rank", "{:.2f}"), ("MAP ↑", "map", "{:.3f}"),
                 ("MAP, both directions ↑", "map_both", "{:.3f}"),
                 ("link mean rank ↓", "link_mean_rank", "{:.2f}"), ("link MAP ↑", "link_map", "{:.3f}"),
                 ("loss", "loss", "{:.4f}"), ("seconds", "seconds", "{:.1f}")])


def _hierarchy(source: str, instances: bool):
    """(Hierarchy, label) of an edge file or ``wordnet:ROOT``."""
    if source.startswith("wordnet:"):
        from reality_stone.data.wordnet import wordnet_closure

        root = source.split(":", 1)[1]
        if not root:
            raise ValueError("wordnet: needs a root, e.g. wordnet:mammal.n.01")
        return wordnet_closure(root, instances=instances), f"WordNet {root}"
    from reality_stone.data.edges import read_edge_file

    return read_edge_file(source), source


def _write_embedding(path: Path, emb, hierarchy, row: dict) -> None:
    from safetensors.torch import save_file

    from reality_stone.models.format import atomic_path

    meta = {"names": json.dumps(list(hierarchy.names)), "result": json.dumps({k: v for k, v in row.items()})}
    with atomic_path(Path(path)) as tmp:
        save_file({"embedding": emb.contiguous()}, str(tmp), metadata=meta)


def _plot_embedding(path: Path, emb, hierarchy, geometry: str, c: float, row: dict) -> None:
    import matplotlib
    import torch

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reality_stone.geometry import conversions

    pts = emb.double()
    if geometry == "lorentz":  # draw the hyperboloid through its Poincaré disk
        pts = conversions.lorentz_to_poincare(pts, c=c, check=False)
    fig, ax = plt.subplots(figsize=(7, 7))
    if geometry != "euclidean":
        ax.add_patch(plt.Circle((0, 0), 1 / c**0.5, fill=False, color="0.6"))
    e = hierarchy.edges
    parent_count = torch.bincount(e[:, 1], minlength=hierarchy.num_nodes)
    ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.6)
    for i in torch.argsort(parent_count, descending=True)[:15].tolist():  # the most general nodes
        ax.annotate(hierarchy.names[i].split(".")[0], (float(pts[i, 0]), float(pts[i, 1])), fontsize=7)
    ax.set_aspect("equal")
    ax.set_title(f"{row['hierarchy']}: {geometry} d=2, MAP {row['map']:.3f}")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


@app.command("hyperbolic-demo")
def hyperbolic_demo(
    dims: str = typer.Option("2,5", help="comma-separated embedding dimensions"),
    epochs: int = typer.Option(100, min=1, help="training epochs per embedding"),
    quick: bool = typer.Option(False, "--quick", help="small subtree (canids) and few epochs, for CI"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON instead of a table"),
    threads: int = THREADS,
) -> None:
    """Embed the WordNet mammal hierarchy in the Poincaré ball and in Euclidean space; print the table.

    Reconstruction task of Nickel & Kiela (2017): mean rank (1 is perfect) and MAP of each
    node's ancestors/descendants among all nodes, ordered by embedding distance.
    """
    from rich.progress import Progress

    from reality_stone.data.wordnet import wordnet_closure
    from reality_stone.hierarchy import embed_hierarchy

    _threads(threads)
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
                r = embed_hierarchy(hierarchy, dim, geometry, epochs=epochs, batch_size=batch, seed=0,
                                       init="random")  # the same start: the comparison is of geometries
                rows.append(
                    dict(geometry=geometry, dim=dim, mean_rank=r.mean_rank_both, map=r.map_both,
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
    for col in ("geometry", "dim", "mean rank ↓ (both directions)", "MAP ↑ (both directions)", "loss", "seconds"):
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


def _codec(codec: str, opts: list[str], preset: str | None = None):
    from reality_stone.codecs import codec_config

    kwargs = _parse_opts(opts)
    if preset is not None:
        kwargs["preset"] = preset
    try:
        return codec_config(codec, **kwargs)
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
    model: str = typer.Argument(..., help="smollm2, minilm, qwen2.5-coder-0.5b, a Hugging Face model folder "
                                          "(config.json + weights), a .gguf file, or a safetensors checkpoint "
                                          "file/folder without config.json (streamed tensor by tensor)"),
    codec: str = typer.Option("rtn", help="codec name (see `reality-stone codecs`)"),
    opt: list[str] = typer.Option([], "--opt", help="codec option key=value, repeatable (e.g. --opt bits=4)"),
    preset: str = typer.Option(None, "--preset", help="codec preset, e.g. seedbasis 4.25 / 3.5 / 2.5"),
    output: Path = typer.Option(..., "-o", "--output", help="output .safetensors file"),
    skip: list[str] = typer.Option(list(DEFAULT_SKIP), "--skip", help="glob of layer names to keep dense, "
                                   "repeatable; replaces the default (the LM head): --skip lm_head --skip 'x*' keeps "
                                   "both, --skip '' compresses every linear layer"),
    head_bits: int = typer.Option(0, "--head-bits", min=0, max=8, help="also compress the LM head: round-to-nearest, "
                                  "symmetric, this many bits (2-8), group 128 — 8 keeps its quality and cuts the "
                                  "per-token read 4×; a head tied to the embeddings stays one matrix. 0: dense"),
    calibration: str = typer.Option(None, "--calibration", help="calibration text for data-aware codecs "
                                    "(gptq, seedbasis): a text file, or the bundled 'shakespeare' / 'news'"),
    calibration_tokens: int = typer.Option(8192, "--calibration-tokens", min=1, help="calibration tokens to use"),
    seq_len: int = typer.Option(512, "--seq-len", min=8, help="calibration sequence length (tokens)"),
    sequential: bool = typer.Option(True, "--sequential/--one-pass", help="calibrate block by block through the "
                                    "already-compressed blocks (default), or in one pass over the dense model"),
    tune_epochs: int = typer.Option(0, "--tune-epochs", min=0, help="with --calibration: after encoding, fit the norm "
                                    "gains and biases to the uncompressed model's next-token distributions on the "
                                    "calibration text for N epochs (the best on held-out calibration sequences is kept; "
                                    "the codes do not change; ~2.5 forward passes per sequence and epoch). Not with "
                                    "--stream"),
    mixed: bool = typer.Option(False, "--mixed", help="with --calibration: spread the codec's bits over the layers by "
                               "their measured sensitivity (output Fisher × output error), same total bits; each layer "
                               "gets a rung of the codec's ladder (seedbasis 2.0-5.0 bits, rtn/hqq/gptq ±1 bit)"),
    stream: bool = typer.Option(False, "--stream", help="stream a model folder or .gguf file: tensor by tensor "
                                "(data-free codecs) or, with --calibration, decoder block by decoder block (one "
                                "block's weights in memory)"),
    max_memory: str = typer.Option("2G", "--max-memory", help="calibrated streaming: hidden states kept in RAM up to "
                                   "this size (e.g. 512M, 4G), beyond it in a file beside the output"),
    workers: int = typer.Option(1, min=1, help="streamed checkpoints: parallel Ray workers (needs the distributed extra)"),
    ray_address: str = typer.Option(None, "--ray-address", help="streamed checkpoints: Ray cluster address"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="streamed checkpoints: continue an interrupted "
                                "run. An in-memory run (bundled model, folder, GGUF) that is interrupted starts over; "
                                "it never leaves a partial output file"),
    as_json: bool = typer.Option(False, "--json", help="print the per-layer report as JSON"),
    threads: int = THREADS,
) -> None:
    """Compress every nn.Linear of MODEL with CODEC and save one self-contained .safetensors file.

    Data-aware codecs take --calibration: `compress smollm2 --codec seedbasis --preset 3.5
    --calibration shakespeare -o out.safetensors`. The file holds the tokenizer, so
    `reality-stone eval out.safetensors` and `reality-stone generate out.safetensors "…"` need nothing else.
    """
    from reality_stone.codecs import codec_config
    from reality_stone.models import compress, save
    from reality_stone.models.block_streaming import parse_size
    from reality_stone.models.compress import check_calibration, check_mixed
    from reality_stone.evaluation.loaders import is_model_folder, load_model

    n_threads = _threads(threads)
    config = _codec(codec, opt, preset)
    try:  # the codec validates the bit width (rtn: 2…8)
        head = codec_config("rtn", bits=head_bits, group=128, symmetric=True) if head_bits else None
    except ValueError as exc:
        raise typer.BadParameter(f"--head-bits (0 for a dense head): {exc}") from None
    calib = _calibration_arg(calibration)
    try:  # before loading anything: a codec/calibration mismatch fails at once
        check_calibration([config], calib is not None, mixed=mixed)
    except ValueError as exc:
        _fail(str(exc))
    if tune_epochs and calib is None:
        _fail("--tune-epochs fits the compressed model to the uncompressed one on the calibration text: give --calibration")
    if mixed:
        try:
            check_mixed(config, calib is not None)
        except ValueError as exc:
            _fail(f"--mixed: {exc}")
    path = Path(model)
    if path.exists() and (stream or not (is_model_folder(path) or path.suffix == ".gguf")):
        if tune_epochs or mixed:
            _fail(f"{'--tune-epochs' if tune_epochs else '--mixed'} needs the whole uncompressed model in memory "
                  "(a backward pass over the calibration text): not with --stream or a safetensors checkpoint")
        if (calib is not None or config.calibration == "required") and not (is_model_folder(path) or
                                                                             path.suffix == ".gguf"):
            _fail(f"{model}: calibration runs the model, which needs its architecture: give a Hugging Face model "
                  f"folder or a .gguf file (streamed block by block with --stream), or a data-free codec")
        try:
            budget = parse_size(max_memory)
        except ValueError as exc:
            raise typer.BadParameter(f"--max-memory: {exc}") from None
        _compress_checkpoint(path, config, output, skip, workers, ray_address, resume, as_json,
                             calibration=dict(calibration=calib, tokens=calibration_tokens, seq_len=seq_len,
                                              max_memory=budget) if calib is not None else None, head=head)
        return
    try:
        loaded = load_model(model)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if calib is not None and not isinstance(calib, str) and loaded.tokenizer is None:
        _fail(f"{model} has no tokenizer to read the calibration text with")
    try:
        report = compress(loaded.model, config, skip=tuple(p for p in skip if p), progress=not as_json, calibration=calib,
                          tokenizer=loaded.tokenizer, tokens=calibration_tokens, seq_len=seq_len, sequential=sequential,
                          head=head, tune_epochs=tune_epochs, mixed=mixed)
    except ValueError as exc:
        _fail(str(exc))
    save(loaded.model, output, source=loaded.name, tokenizer=loaded.tokenizer)
    summary = report.to_dict() | {"output": str(output), "file_bytes": output.stat().st_size, "threads": n_threads}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    _print_report(report.to_dict(), f"{model}: {len(report.layers)} layers compressed with {config.codec_name}", output)


def _print_report(report: dict, title: str, output: Path) -> None:
    """The per-layer table (first 12 rows), the calibration line and the totals of a compression report."""
    layers = report["layers"]
    _print_rows([r | {"shape_s": f"{r['shape'][0]}×{r['shape'][1]}"} for r in layers][:12] +
                ([{"name": f"… {len(layers) - 12} more"}] if len(layers) > 12 else []), title,
                [("layer", "name", "{}"), ("shape", "shape_s", "{}"), ("bits/weight", "bits_per_weight", "{:.3f}"),
                 ("rel. error", "rel_error", "{:.4f}"), ("output rel. error", "output_error", "{:.4f}"),
                 ("SQNR dB", "sqnr_db", "{:.2f}"), ("seconds", "seconds", "{:.2f}")])
    if report["calibration"]:
        c = report["calibration"]
        how = f"{c['mode']}" + (", streamed block by block (hidden states in " + c["hidden_states"] + ")"
                                if c.get("streamed_blocks") else "")
        console.print(f"calibration: {how}, {c['tokens']} tokens ({c['sequences']} × {c['seq_len']}), "
                      + (f"{c['seconds']:.1f} s including compression; " if "seconds" in c else "")
                      + f"mean output rel. error {report['output_error']:.4f}")
        if c.get("allocation"):
            a = c["allocation"]
            console.print("mixed allocation: layers per bits " + ", ".join(f"{b}: {n}" for b, n in
                                                                       a["layers_per_bits"].items())
                          + f" (mean {a['nominal_bits_per_weight']:.3f}); predicted loss "
                          f"{a['predicted_loss']['uniform']:.4g} → {a['predicted_loss']['mixed']:.4g} nats/token, "
                          f"{a['seconds']:.1f} s")
        if c.get("tuning"):
            t = c["tuning"]
            console.print(f"tuning: {t['parameters']} norm/bias parameters, {t['epochs']} epoch(s), kept "
                          + (f"epoch {t['kept_epoch']}" if t["kept_epoch"] else "none (the untuned model)")
                          + f"; held-out KL {t['heldout_kl'][0]:.4g} → {min(t['heldout_kl']):.4g} nats/token, "
                          f"{t['seconds']:.1f} s")
    console.print(f"total: {report['bits_per_weight']:.3f} bits/weight over compressed layers, "
                  f"{report['dense_bytes_fp32'] / report['compressed_bytes']:.2f}× smaller than fp32; "
                  f"kept dense: {', '.join(report['skipped']) or 'none'}; file {output} ({output.stat().st_size / 1e6:.1f} MB)")


def _calibration_arg(calibration: str | None):
    """--calibration: a bundled corpus name, or an existing text file (a Path)."""
    from reality_stone.calibration import BUNDLED_CORPORA

    if calibration is None or calibration in BUNDLED_CORPORA:
        return calibration
    path = Path(calibration)
    if not path.is_file():
        raise typer.BadParameter(f"--calibration {calibration!r}: no such file, and not one of {BUNDLED_CORPORA}")
    return path


def _compress_checkpoint(src: Path, config, output: Path, skip, workers, ray_address, resume, as_json,
                         calibration: dict | None = None, head=None) -> None:
    """Stream a checkpoint (`reality_stone.models.streaming`): tensor by tensor, or with
    ``calibration`` (compress_checkpoint's keyword arguments) block by block."""
    from reality_stone.models.streaming import compress_checkpoint

    try:
        summary = compress_checkpoint(src, output, config, skip=tuple(p for p in skip if p), workers=workers,
                                      ray_address=ray_address, resume=resume, progress=not as_json, source=str(src),
                                      head=head, **(calibration or {}))
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    except OSError as exc:  # a full disk: the parts so far stay, --resume continues once there is space
        _fail(f"{exc}; finished parts are kept in {output}.parts: run the same command again to resume")
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    if "report" in summary:
        _print_report(summary["report"], f"{src}: {summary['compressed_layers']} layers compressed with "
                      f"{config.codec_name}, block by block ({summary['blocks']} blocks, "
                      f"{summary['resumed_blocks']} resumed, {summary['workers']} worker(s))", output)
        console.print(f"{summary['input_bytes'] / 1e6:.1f} MB -> {summary['output_bytes'] / 1e6:.1f} MB in "
                      f"{summary['seconds']:.1f} s")
        return
    _print_rows([summary], f"{src}: streamed with {config.codec_name}",
                [("tensors", "tensors", "{}"), ("compressed layers", "compressed_layers", "{}"),
                 ("resumed", "resumed_tensors", "{}"), ("workers", "workers", "{}"), ("seconds", "seconds", "{:.1f}")])
    console.print(f"{summary['input_bytes'] / 1e6:.1f} MB -> {summary['output_bytes'] / 1e6:.1f} MB: {output}")


def _open_model(source: str, activations: str = "fp32"):
    """(model, tokenizer, kind, description) of a compressed file or of any model `load_model` takes."""
    from reality_stone.models import load, read_metadata
    from reality_stone.models.format import load_tokenizer_from_file
    from reality_stone.evaluation.loaders import BUNDLED, load_model, load_tokenizer

    path = Path(source)
    try:
        if path.is_file() and path.suffix == ".safetensors":
            meta = read_metadata(path)
            model = load(path)
            tok = load_tokenizer_from_file(path)
            origin = meta["source"]
            if tok is None and origin in BUNDLED:
                tok = load_tokenizer(origin)  # files written before tokenizers were stored
            arch = (meta["architecture"] or {}).get("class", "")
            kind = "causal-lm" if arch.endswith("ForCausalLM") else "encoder"
        else:
            loaded = load_model(source)
            model, tok, kind, origin = loaded.model, loaded.tokenizer, loaded.kind, loaded.name
        if activations != "fp32":
            from reality_stone.nn import set_activations

            set_activations(model, activations)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    return model, tok, kind, origin


@app.command("eval")
@_no_grad
def eval_cmd(
    path: str = typer.Argument(..., help="a file written by `reality-stone compress`, or any model `compress` takes "
                                         "(bundled name, model folder, .gguf)"),
    text: list[str] = typer.Option(None, "--text", help="bundled held-out text: shakespeare (Hamlet) or news (Lee "
                                   "corpus), repeatable; default both unless --text-file is given"),
    text_file: list[Path] = typer.Option([], "--text-file", help="your own UTF-8 text file to score, repeatable"),
    base: str = typer.Option(None, "--base", help="score this uncompressed SOURCE in the same run: its perplexity, "
                             "the ratio, KL divergence and top-1 agreement ('source' = the model the file came from)"),
    tokens: int = typer.Option(2048, min=16, help="tokens of each text to score"),
    context: int = typer.Option(512, min=8),
    stride: int = typer.Option(256, min=1),
    activations: str = typer.Option("fp32", help="fp32 (exact) or int8 (quantised per group on the fly; "
                                                  "rtn/hqq/gptq: AVX-512 VNNI kernel; seed basis 3.5/2.5: "
                                                  "VNNI + VBMI)"),
    speed: bool = typer.Option(True, "--speed/--no-speed", help="causal LMs: measure decode tokens/s at batch 1"),
    as_json: bool = typer.Option(False, "--json"),
    threads: int = THREADS,
) -> None:
    """Perplexity (causal LM) or embedding fidelity (encoder) of a model, beside its base model if asked,
    plus decode speed and peak memory.

    KL is the mean KL(base ‖ model) of next-token distributions in nats per token (llama.cpp's
    --kl-divergence); top-1 is the fraction of positions where both pick the same next token.
    """
    from reality_stone.data.text import EVAL_TEXTS, evaluation_text
    from reality_stone.evaluation.metrics import model_nbytes, peak_rss_bytes, score_text, tokens_per_second

    n_threads = _threads(threads)
    model, tok, kind, origin = _open_model(path, activations)
    base_model = None
    if base is not None:
        base_source = origin if base == "source" else base
        if base_source is None:
            _fail(f"{path} does not say which model it came from: give --base SOURCE")
        base_model, _, base_kind, _ = _open_model(base_source)
        if base_kind != kind:
            _fail(f"--base {base_source} is a {base_kind} model, {path} a {kind} one")
    result = dict(file=str(path), source=origin, activations=activations, threads=n_threads,
                  weight_bytes=model_nbytes(model))
    if base_model is not None:
        result["base"] = base_source
        result["base_weight_bytes"] = model_nbytes(base_model)
    if kind == "causal-lm":
        if tok is None:
            _fail(f"{path} holds no tokenizer and its source {origin!r} is not a bundled model")
        for name in text or []:
            if name not in EVAL_TEXTS:
                raise typer.BadParameter(f"--text {name!r}: choose from {EVAL_TEXTS}, or give --text-file")
        texts = {name: evaluation_text(name) for name in (text if text else ([] if text_file else EVAL_TEXTS))}
        for f in text_file:
            if not f.is_file():
                raise typer.BadParameter(f"--text-file {f}: no such file")
            texts[f.name] = f.read_text(encoding="utf-8", errors="replace")
        scores = {}
        with Progress(console=console, transient=True, disable=as_json) as progress:
            task = progress.add_task("scoring", total=len(texts))
            for name, body in texts.items():
                progress.update(task, description=f"scoring {name}")
                try:
                    scores[name] = score_text(model, tok, body, base=base_model, context=context, stride=stride,
                                              max_tokens=tokens)
                except ValueError as exc:
                    _fail(f"{name}: {exc}")
                if base_model is not None:
                    scores[name]["ppl_ratio"] = scores[name]["ppl"] / scores[name]["base_ppl"]
                result[f"ppl_{name}"] = scores[name]["ppl"]
                result["tokens_scored"] = scores[name]["tokens"]
                progress.advance(task)
        result["texts"] = scores
        if speed:
            result["tokens_per_s"] = tokens_per_second(model, tok)
            if base_model is not None:
                result["base_tokens_per_s"] = tokens_per_second(base_model, tok)
    else:
        from reality_stone.evaluation.metrics import embedding_fidelity, lee_sentences
        from reality_stone.evaluation.loaders import load_model

        if base_model is None:  # the dense original is the reference an encoder is compared with
            try:
                base_model = load_model(origin).model
            except (ValueError, FileNotFoundError, TypeError):
                _fail(f"{path}: give --base SOURCE (the uncompressed model) to compare embeddings with")
        result.update(embedding_fidelity(base_model, model, tok, lee_sentences(64)))
    result["peak_rss_bytes"] = peak_rss_bytes()
    if as_json:
        print(json.dumps(result, indent=2))
        return
    if kind == "causal-lm":
        rows = [dict(text=name, **r) for name, r in result["texts"].items()]
        cols = [("text", "text", "{}"), ("tokens", "tokens", "{}"), ("perplexity", "ppl", "{:.3f}")]
        if base_model is not None:
            cols += [("base perplexity", "base_ppl", "{:.3f}"), ("ratio", "ppl_ratio", "{:.4f}"),
                     ("KL nats/token", "kl", "{:.4f}"), ("top-1 agreement", "top1", "{:.4f}")]
        _print_rows(rows, f"{path} ({origin})" + (f" vs base {result['base']}" if base_model is not None else ""), cols)
    extra = {k: v for k, v in result.items() if k not in ("texts",) and not k.startswith("ppl_")}
    table = Table(title="model")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in extra.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)


@app.command("generate")
@_no_grad
def generate_cmd(
    path: str = typer.Argument(..., help="a compressed file, or any model `compress` takes"),
    prompt: str = typer.Argument(..., help="the prompt"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, max=4096),
    chat: bool = typer.Option(True, "--chat/--raw", help="wrap the prompt in the tokenizer's chat template "
                              "(when it has one)"),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy (deterministic)"),
    seed: int = typer.Option(0, help="sampling seed (temperature > 0)"),
    activations: str = typer.Option("fp32", help="fp32 or int8 (rtn/hqq/gptq; seed basis with ≤ 4 coefficients)"),
    lean: bool = typer.Option(True, "--lean/--transformers", help="the lean decode loop for llama/mistral/qwen2/qwen3 "
                              "(same tokens, faster), or transformers' generate"),
    as_json: bool = typer.Option(False, "--json"),
    threads: int = THREADS,
) -> None:
    """Generate text from a (compressed) causal LM, at batch 1 with a KV cache; prints tokens/s."""
    import torch

    n_threads = _threads(threads)
    model, tok, kind, origin = _open_model(path, activations)
    if kind != "causal-lm":
        _fail(f"{path} is not a causal language model ({origin})")
    if tok is None:
        _fail(f"{path} holds no tokenizer")
    if chat and getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tok(prompt, return_tensors="pt").input_ids
    torch.manual_seed(seed)
    loop = _decoder(model) if lean else None
    t0 = time.perf_counter()
    if loop is not None:  # the lean batch-1 loop (reality_stone.models.decoder): the model's own tokens, faster
        out = loop.generate(ids, max_new_tokens, temperature=temperature, eos_token_id=tok.eos_token_id,
                            generator=torch.Generator().manual_seed(seed))
    else:
        sampling = dict(do_sample=True, temperature=temperature) if temperature > 0 else dict(do_sample=False)
        out = model.generate(ids, max_new_tokens=max_new_tokens, pad_token_id=tok.eos_token_id, **sampling)
    dt = time.perf_counter() - t0
    new = out[0, ids.shape[1]:]
    text = tok.decode(new, skip_special_tokens=True)
    result = dict(file=str(path), source=origin, prompt=prompt, text=text, new_tokens=int(len(new)),
                  seconds=dt, tokens_per_s=len(new) / dt, threads=n_threads,
                  loop="reality_stone Decoder" if loop is not None else "transformers generate")
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(text, markup=False, highlight=False)
    console.print(f"[dim]{len(new)} tokens in {dt:.2f} s ({len(new) / dt:.1f} tokens/s, {n_threads} threads, "
                  f"{result['loop']})[/dim]")


def _decoder(model):
    """The lean decode loop for ``model``, or None where it does not run that model (its family,
    activation or dtype; `Decoder` says which by ValueError): then transformers' generate runs."""
    from reality_stone.models.decoder import Decoder

    try:
        return Decoder(model)
    except ValueError:
        return None


@app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="a compressed model file"),
    as_json: bool = typer.Option(False, "--json"),
    threads: int = THREADS,
) -> None:
    """Show a compressed model file's format, architecture and per-layer codecs and sizes."""
    from reality_stone.models import read_metadata

    _threads(threads)
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
def codecs_cmd(
    as_json: bool = typer.Option(False, "--json"),
    threads: int = THREADS,
) -> None:
    """List the registered codecs: what each does, its bits per weight, whether it calibrates, what it can do
    (fused matmul, int8 activations, trainable: declared by the codec), its options."""
    import dataclasses

    from reality_stone.codecs import codec_class, codec_config, registered_codecs

    _threads(threads)
    rows = []
    for name in registered_codecs():
        cls = codec_class(name)
        default = codec_config(name)
        presets = getattr(cls, "PRESETS", None) or {}
        bpw = {"default": default.nominal_bits_per_weight()}
        bpw |= {f"preset {k}": codec_config(name, preset=k).nominal_bits_per_weight() for k in presets}
        caps = default.capabilities
        rows.append(dict(codec=name, description=cls.description, calibration=cls.calibration,
                         bits_per_weight={k: v for k, v in bpw.items() if v is not None}, presets=sorted(presets),
                         capabilities=dataclasses.asdict(caps), error_bound=cls.error_bound,
                         options={f.name: f.default for f in dataclasses.fields(cls)}))
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title="registered codecs (bits/weight: nominal, before headers and padding; "
                        "calibration: unused / optional / required)")
    for col in ("codec", "description", "bits/weight", "calibration", "runs as", "options (defaults)"):
        table.add_column(col, overflow="fold")
    for r in rows:
        bpw = ", ".join(f"{v:.2f}" + ("" if k == "default" else f" ({k})") for k, v in r["bits_per_weight"].items())
        caps = r["capabilities"]
        runs = ", ".join([("fused kernel" if caps["fused_matmul"] else "decode + matmul")]
                         + (["int8 activations"] if caps["int8_activations"] else [])
                         + (["trainable"] if caps["trainable"] else []))
        table.add_row(r["codec"], r["description"], bpw or "depends on the weight", r["calibration"], runs,
                      ", ".join(f"{k}={v!r}" for k, v in r["options"].items()))
    console.print(table)


@app.command()
@_no_grad
def demo(
    quick: bool = typer.Option(False, "--quick", help="fewer tokens, no speed measurement (CI)"),
    tokens: int = typer.Option(2048, min=64, help="tokens of each held-out text to score"),
    as_json: bool = typer.Option(False, "--json"),
    threads: int = THREADS,
) -> None:
    """Compress SmolLM2-135M at ~4 and ~3.5 bits per weight and one extreme ratio; evaluate; print the table."""

    from reality_stone.evaluation.demo import demo_specs
    from reality_stone.evaluation.experiment import evaluate_specs
    from reality_stone.evaluation.loaders import load_smollm2

    _threads(threads)
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
