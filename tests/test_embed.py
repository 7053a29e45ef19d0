"""`embed` / `reality-stone embed`: edge files, closure, metrics, sparse steps, checkpoints, bad input."""

import json

import pytest
import torch
from typer.testing import CliRunner

from reality_stone.cli import app
from reality_stone.data.edges import closure_of_parents, read_edge_file
from reality_stone.hierarchy import _csr, _distance_fn, _sample_negatives, embed, rank_metrics, reconstruction_metrics
from reality_stone.geometry import lorentz
from reality_stone.optim import RiemannianAdam

TREE = "child\tparent\n# a comment\nb\ta\nc\ta\nd\tb\ne\tb\nf\tc\ng\tc\nh\td\n"


@pytest.fixture
def tree(tmp_path):
    p = tmp_path / "tree.tsv"
    p.write_text(TREE)
    return p


def test_edge_file_closure(tree, tmp_path):
    h = read_edge_file(tree)
    assert h.names == tuple("abcdefgh") and h.names[h.root] == "a"
    pairs = {(h.names[d], h.names[a]) for d, a in h.edges.tolist()}
    assert pairs == {("b", "a"), ("c", "a"), ("d", "b"), ("d", "a"), ("e", "b"), ("e", "a"), ("f", "c"), ("f", "a"),
                     ("g", "c"), ("g", "a"), ("h", "d"), ("h", "b"), ("h", "a")}
    csv = tmp_path / "t.csv"
    csv.write_text(TREE.replace("\t", ","))
    assert torch.equal(read_edge_file(csv).edges, h.edges)


@pytest.mark.parametrize("text, match", [
    ("a,b\nb,c\nc,a\n", r"cycle a → b → c → a"),
    ("a,a\n", "its own parent"),
    ("a,b\nonly-one-field\n", ":2: expected two fields"),
    ("# nothing\n\n", "no edges"),
])
def test_edge_file_bad_input(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_edge_file(p)
    with pytest.raises(FileNotFoundError):
        read_edge_file(tmp_path / "missing.tsv")
    with pytest.raises(ValueError, match="closure is empty"):
        closure_of_parents({"x": [], "y": []})


def test_chunked_metrics_equal_the_dense_ones():
    g = torch.Generator().manual_seed(0)
    h = closure_of_parents({str(i): [str(i // 3)] if i else [] for i in range(40)})
    emb = torch.randn(h.num_nodes, 3, generator=g, dtype=torch.float64) * 0.15  # inside the ball
    dist = _distance_fn("poincare", 1.0)
    dense = reconstruction_metrics(dist(emb[:, None], emb[None]), h.adjacency())
    chunked = rank_metrics(emb, "poincare", torch.cat([h.edges, h.edges.flip(1)]), chunk=7)
    assert dense == pytest.approx(chunked, rel=1e-12)
    for geometry, pts in (("euclidean", emb), ("lorentz", lorentz.expmap0(torch.cat([torch.zeros(len(emb), 1,
                                                                                 dtype=emb.dtype), emb * 3], 1), c=1.0))):
        dist = _distance_fn(geometry, 1.0)
        dense = reconstruction_metrics(dist(pts[:, None], pts[None]), h.adjacency())
        assert dense == pytest.approx(rank_metrics(pts, geometry, torch.cat([h.edges, h.edges.flip(1)]), chunk=9),
                                      rel=1e-12)


@pytest.mark.parametrize("geometry", ["poincare", "lorentz", "euclidean"])
def test_embed_learns_the_tree_and_is_deterministic(tree, geometry):
    h = read_edge_file(tree)
    r = embed(h, 2, geometry, epochs=60, batch_size=4, burn_in=5, seed=0)
    assert r.map == pytest.approx(1.0) or (geometry == "euclidean" and r.map > 0.7), r
    again = embed(h, 2, geometry, epochs=60, batch_size=4, burn_in=5, seed=0)
    assert torch.equal(r.embedding, again.embedding)
    if geometry == "lorentz":
        lorentz.check_point(r.embedding, c=1.0)
    if geometry == "poincare":
        assert bool((r.embedding.norm(dim=-1) < 1).all())


@pytest.mark.slow  # multi-second integration test: `make test` runs it, `make test-fast` does not
@pytest.mark.parametrize("geometry", ["poincare", "lorentz", "euclidean"])
def test_sparse_row_path_trains_and_is_deterministic(geometry):
    """batch × (negatives + 2) < N: the table is read sparsely and only touched rows move."""
    h = closure_of_parents({str(i): [str((i - 1) // 2)] if i else [] for i in range(63)})  # a binary tree
    kw = dict(epochs=15, batch_size=4, negatives=5, burn_in=2, seed=0)
    r = embed(h, 3, geometry, **kw)
    assert torch.equal(r.embedding, embed(h, 3, geometry, **kw).embedding)
    assert torch.isfinite(r.embedding).all() and r.map > 0.3, r
    if geometry == "lorentz":
        lorentz.check_point(r.embedding, c=1.0)


def test_hard_negatives_are_two_closure_hops_from_the_anchor():
    """The last `hard` columns are w with (u, v), (v, w) in the training closure; the rest uniform.
    Two separate trees: two hops never leave u's tree, uniform draws do."""
    tree = {str(i): [str((i - 1) // 2)] if i else [] for i in range(31)}
    h = closure_of_parents(tree | {f"b{k}": [f"b{v[0]}"] if v else [] for k, v in tree.items()})
    pairs = torch.cat([h.edges, h.edges.flip(1)])
    n = h.num_nodes
    ptr, cols = _csr(pairs, n)
    adj = torch.zeros(n, n, dtype=torch.bool)
    adj[pairs[:, 0], pairs[:, 1]] = True
    two_hops = (adj.double() @ adj.double()) > 0
    u = torch.randint(0, n, (500,), generator=torch.Generator().manual_seed(1))
    neg = _sample_negatives(u, n, 8, 3, ptr, cols, torch.Generator().manual_seed(0))
    assert neg.shape == (500, 8)
    assert bool(two_hops[u[:, None], neg[:, 5:]].all())
    assert not bool(two_hops[u[:, None], neg[:, :5]].all())  # the uniform ones reach the other tree
    same = _sample_negatives(u, n, 8, 3, ptr, cols, torch.Generator().manual_seed(0))
    assert torch.equal(neg, same)
    assert torch.equal(_sample_negatives(u, n, 8, 0, None, None, torch.Generator().manual_seed(0)),
                       torch.randint(0, n, (500, 8), generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("geometry", ["poincare", "euclidean"])
def test_embed_with_hard_negatives_learns_and_is_deterministic(tree, geometry):
    h = read_edge_file(tree)
    kw = dict(epochs=60, batch_size=4, negatives=6, hard_negatives=3, burn_in=5, seed=0)
    r = embed(h, 2, geometry, **kw)
    assert r.map == pytest.approx(1.0) or (geometry == "euclidean" and r.map > 0.7), r
    assert torch.equal(r.embedding, embed(h, 2, geometry, **kw).embedding)


def test_holdout_reports_link_prediction(tree):
    r = embed(read_edge_file(tree), 2, epochs=20, batch_size=4, burn_in=5, holdout=0.2)
    assert r.link_mean_rank is not None and r.link_mean_rank >= 1 and 0 < r.link_map <= 1
    with pytest.raises(ValueError, match="holdout"):
        embed(read_edge_file(tree), 2, epochs=1, holdout=1.0)


def test_interrupted_run_resumes_to_the_same_embedding(tree, tmp_path):
    h = read_edge_file(tree)
    full = embed(h, 3, epochs=30, batch_size=4, burn_in=5, seed=1)
    ckpt = tmp_path / "run.ckpt"

    def stop(epoch, loss):
        if epoch == 14:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed(h, 3, epochs=30, batch_size=4, burn_in=5, seed=1, checkpoint=ckpt, checkpoint_every=5, on_epoch=stop)
    assert ckpt.is_file()
    seen = []
    resumed = embed(h, 3, epochs=30, batch_size=4, burn_in=5, seed=1, checkpoint=ckpt, checkpoint_every=5,
                    on_epoch=lambda e, l: seen.append(e))
    assert seen[0] == 10  # resumed from the checkpoint of epoch 10
    assert torch.equal(resumed.embedding, full.embedding)
    with pytest.raises(ValueError, match="another hierarchy or other settings"):
        embed(h, 3, epochs=30, batch_size=4, seed=2, checkpoint=ckpt)


@pytest.mark.parametrize("kw, match", [
    (dict(dim=1), "dim must be an integer >= 2"), (dict(geometry="sphere"), "geometry must be one of"),
    (dict(epochs=0), "epochs must be a positive integer"),
    (dict(negatives=5, hard_negatives=6), "hard_negatives must be an integer in"),
    (dict(hard_negatives=-1), "hard_negatives must be an integer in"),
])
def test_embed_bad_arguments(tree, kw, match):
    args = dict(dim=2, geometry="poincare", epochs=1) | kw
    with pytest.raises(ValueError, match=match):
        embed(read_edge_file(tree), args.pop("dim"), args.pop("geometry"), **args)


def test_sparse_riemannian_adam_touches_only_the_batch_rows():
    from reality_stone.geometry import ManifoldParameter, PoincareBall, poincare

    g = torch.Generator().manual_seed(0)
    start = poincare.random_point(10, 3, c=1.0, std=0.5, dtype=torch.float64, generator=g)
    dense = ManifoldParameter(start.clone(), PoincareBall(1.0))
    sparse = ManifoldParameter(start.clone(), PoincareBall(1.0))
    idx = torch.tensor([1, 4, 4, 7])
    target = torch.zeros(4, 3, dtype=torch.float64)
    for p, is_sparse in ((dense, False), (sparse, True)):
        opt = RiemannianAdam([p], lr=0.1)
        loss = poincare.dist(torch.nn.functional.embedding(idx, p, sparse=is_sparse), target, c=1.0).sum()
        loss.backward()
        opt.step()
    # step 1 of Adam: rows with a gradient move identically, the others stay (dense Adam moves
    # them by 0 too: zero gradient, zero moments)
    torch.testing.assert_close(sparse.detach(), dense.detach(), rtol=1e-12, atol=1e-14)
    untouched = [i for i in range(10) if i not in (1, 4, 7)]
    assert torch.equal(sparse.detach()[untouched], start[untouched])
    assert not torch.equal(sparse.detach()[[1, 4, 7]], start[[1, 4, 7]])


def test_cli_embed(tree, tmp_path):
    runner = CliRunner()
    out = tmp_path / "emb.safetensors"
    res = runner.invoke(app, ["embed", str(tree), "--dim", "2", "--epochs", "30", "--batch-size", "4", "--burn-in", "5",
                              "--out", str(out), "--plot", str(tmp_path / "e.png"), "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.output)
    assert row["nodes"] == 8 and row["closure_edges"] == 13 and 0 < row["map"] <= 1
    assert (tmp_path / "e.png").stat().st_size > 1000
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        assert f.get_tensor("embedding").shape == (8, 2)
        assert json.loads(f.metadata()["names"]) == list("abcdefgh")
    for args, msg in ((["--dim", "1"], "--dim must be at least 2"), (["--geometry", "sphere"], "--geometry must be"),
                      (["--plot", "x.png"], "2-d embeddings only")):
        res = runner.invoke(app, ["embed", str(tree), *args])
        assert res.exit_code == 2 and msg in res.output, res.output
    bad = tmp_path / "cyc.csv"
    bad.write_text("a,b\nb,a\n")
    res = runner.invoke(app, ["embed", str(bad)])
    assert res.exit_code == 2 and "cycle" in res.output
