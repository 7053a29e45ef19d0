"""The ``reality-stone`` command line (typer + rich)."""

from __future__ import annotations

import json
import time

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Reality Stone: exact hyperbolic layers and geometric weight compression for PyTorch.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()


@app.callback()
def main() -> None:
    """Reality Stone command line."""


@app.command()
def demo(
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
    hierarchy = wordnet_closure("canine", sense=2) if quick else wordnet_closure("mammal")
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
