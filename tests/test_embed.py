"""`embed` / `reality-stone embed`: edge files, closure, metrics, sparse steps, checkpoints, bad input."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from reality_stone.cli import app
from reality_stone.data.edges import closure_of_parents, read_edge_file
from reality_stone.hierarchy import (_csr, _distance_fn, _sample_negatives, _SampledMAP, _tree_parents, embed, rank_metrics,
                                     reconstruction_metrics, tree_initialisation)
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
    r = embed(h, 2, geometry, epochs=60, batch_size=4, seed=0)
    # the ball starts from the tree and trains the directed pairs, scored as the reference code;
    # the others start at random and train both directions, which the both-directions MAP scores
    score = r.map if geometry == "poincare" else r.map_both
    assert score == pytest.approx(1.0) or (geometry == "euclidean" and score > 0.7), r
    again = embed(h, 2, geometry, epochs=60, batch_size=4, seed=0)
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
    kw = dict(epochs=60, batch_size=4, negatives=6, hard_negatives=3, seed=0)
    r = embed(h, 2, geometry, **kw)
    score = r.map if geometry == "poincare" else r.map_both  # as above
    assert score == pytest.approx(1.0) or (geometry == "euclidean" and score > 0.7), r
    assert torch.equal(r.embedding, embed(h, 2, geometry, **kw).embedding)


def test_holdout_reports_link_prediction(tree):
    r = embed(read_edge_file(tree), 2, epochs=20, batch_size=4, burn_in=5, holdout=0.2)
    assert r.link_mean_rank is not None and r.link_mean_rank >= 1 and 0 < r.link_map <= 1
    with pytest.raises(ValueError, match="holdout"):
        embed(read_edge_file(tree), 2, epochs=1, holdout=1.0)


@pytest.mark.parametrize("start", [dict(init="random", burn_in=5), dict(init="tree", patience=None)],
                         ids=["random start", "tree start, best epoch kept"])
def test_interrupted_run_resumes_to_the_same_embedding(tree, tmp_path, start):
    h = read_edge_file(tree)
    kw = dict(epochs=30, batch_size=4, seed=1) | start
    full = embed(h, 3, **kw)
    ckpt = tmp_path / "run.ckpt"

    def stop(epoch, loss):
        if epoch == 14:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed(h, 3, **kw, checkpoint=ckpt, checkpoint_every=5, on_epoch=stop)
    assert ckpt.is_file()
    seen = []
    resumed = embed(h, 3, **kw, checkpoint=ckpt, checkpoint_every=5, on_epoch=lambda e, l: seen.append(e))
    assert seen[0] == 10  # resumed from the checkpoint of epoch 10
    assert torch.equal(resumed.embedding, full.embedding) and resumed.best_epoch == full.best_epoch
    with pytest.raises(ValueError, match="another hierarchy or other settings"):
        embed(h, 3, **(kw | dict(seed=2)), checkpoint=ckpt)


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


# --- the tree start, directed training, best-epoch selection -----------------------------------

def _binary_tree(levels: int):
    return closure_of_parents({str(i): [str((i - 1) // 2)] if i else [] for i in range(2 ** levels - 1)})


def test_tree_parents_pick_the_deepest_ancestor():
    # e has two parents: b (depth 1) and d (depth 2, under c); its tree parent is d
    h = closure_of_parents({"a": [], "b": ["a"], "c": ["a"], "d": ["c"], "e": ["b", "d"], "f": ["e"]})
    parent, depth = _tree_parents(h.edges, h.num_nodes)
    name = {s: i for i, s in enumerate(h.names)}
    assert [h.names[p] if p >= 0 else None for p in parent.tolist()] == [None, "a", "a", "c", "d", "e"]
    assert depth.tolist() == [0, 1, 1, 2, 3, 4] and name["e"] == 4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tree_initialisation_layout(dtype):
    from reality_stone.geometry import poincare
    from reality_stone.hierarchy import TREE_CONE, TREE_RADIUS_OFFSET

    h = _binary_tree(8)  # 255 nodes, depth 7
    x = tree_initialisation(h, 4, c=2.0, dtype=dtype, seed=0)
    assert x.dtype == dtype and x.shape == (255, 4) and torch.isfinite(x).all()
    parent, depth = _tree_parents(h.edges, h.num_nodes)
    radius = poincare.dist0(x.double(), c=2.0, check=False) * 2.0 ** 0.5  # √c·d, the hyperbolic radius at c = 1
    cap = 28.0 if dtype == torch.float64 else 2 * math.atanh(1 - 1e-5) - 2
    # two siblings spread over a sphere end up antipodal (chord 2, counted as 1): the width
    # shrinks by TREE_CONE per level and R = 2 ln(1/width) + offset
    want = (2 * depth.double() * math.log(1 / TREE_CONE) + TREE_RADIUS_OFFSET).clamp(0.05, cap)
    want[depth == 0] = 0.05
    torch.testing.assert_close(radius, want, rtol=1e-4 if dtype == torch.float32 else 1e-9, atol=1e-4)
    if dtype == torch.float64:
        u = x / x.norm(dim=1, keepdim=True)
        kids = torch.nonzero(parent >= 0).flatten()
        # a child leaves its parent's direction at angle atan(parent's width), width = TREE_CONE^depth
        angle = torch.acos((u[kids] * u[parent[kids]]).sum(1).clamp(-1, 1))
        torch.testing.assert_close(angle, torch.atan(TREE_CONE ** depth[parent[kids]].double()), rtol=1e-6, atol=1e-9)
        sib = torch.nonzero(depth == 1).flatten()  # the root's two children: opposite sides of its direction
        t = u[sib] - (u[sib] * u[0]).sum(1, keepdim=True) * u[0]
        assert torch.nn.functional.cosine_similarity(t[0], t[1], dim=0) == pytest.approx(-1, abs=1e-3)
    assert torch.equal(x, tree_initialisation(h, 4, c=2.0, dtype=dtype, seed=0))
    assert not torch.equal(x, tree_initialisation(h, 4, c=2.0, dtype=dtype, seed=1))
    # before any training, the construction already ranks most ancestors first (random points:
    # 0.05); measured 1.000 in float64 and 0.63 in float32, whose cap (√c·d ≤ 10) merges depths 5–7
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3
    floor = 0.95 if dtype == torch.float64 else 0.55
    assert rank_metrics(x, "poincare", h.edges, c=2.0)[1] > max(floor, 3 * rank_metrics(noise, "poincare", h.edges)[1])


def test_tree_initialisation_of_a_forest():
    from reality_stone.geometry import poincare
    from reality_stone.hierarchy import TREE_CONE, TREE_RADIUS_OFFSET

    # six binary trees side by side: six roots, spread over the sphere as one family
    h = closure_of_parents({f"{t}.{i}": [f"{t}.{(i - 1) // 2}"] if i else [] for t in range(6) for i in range(31)})
    x = tree_initialisation(h, 3, seed=0)
    parent, _ = _tree_parents(h.edges, h.num_nodes)
    roots = torch.nonzero(parent < 0).flatten()
    assert len(roots) == 6
    u = x[roots] / x[roots].norm(dim=1, keepdim=True)
    chord = torch.cdist(u, u).fill_diagonal_(math.inf).amin(1)
    assert chord.min() > 0.9 * 2 ** 0.5  # the octahedron's (√2); random directions: ≈ 0.5
    # placed as children of a virtual root at the origin: R = 2 ln(1/width) + offset, width from the chord
    radius = poincare.dist0(x[roots], c=1.0, check=False)
    torch.testing.assert_close(radius, 2 * torch.log(1 / (TREE_CONE * chord.clamp(max=1.0))) + TREE_RADIUS_OFFSET,
                               rtol=1e-9, atol=1e-9)
    assert rank_metrics(x, "poincare", h.edges)[1] > 0.95  # the previous construction (random roots at the origin): 0.55


@pytest.mark.parametrize("k, n", [(1, 5), (2, 7), (3, 12), (4, 24)])
def test_spread_directions_are_even(k, n):
    from reality_stone.hierarchy import _spread_directions

    # three families (ids interleaved) of n, 2 and 1 members
    family = torch.tensor([0, 1, 2] + [0] * (n - 2) + [1] + [0])
    out, chord = _spread_directions(family, k, torch.Generator().manual_seed(3))
    big = torch.nonzero(family == 0).flatten()
    d = torch.cdist(out[big], out[big]).fill_diagonal_(math.inf)
    torch.testing.assert_close(chord[big], d.amin(1), rtol=0, atol=1e-12)
    assert chord[2] == 2.0  # an only child
    if k == 1:  # the interval's equal spacing
        assert sorted(out[big, 0].tolist()) == pytest.approx([-0.8, -0.4, 0.0, 0.4, 0.8])
        return
    torch.testing.assert_close(out.norm(dim=1), torch.ones(len(family), dtype=torch.float64))
    assert torch.cdist(out[family == 1], out[family == 1])[0, 1] == pytest.approx(2.0, abs=1e-3)  # antipodes
    # the best packing's nearest-neighbour chord: the regular 7-gon; the icosahedron (1.0515); for
    # 24 points on S³ the 24-cell (1.0). Random points come nowhere near (≈ 0.3–0.5).
    best = {2: 2 * math.sin(math.pi / 7), 3: 1.0515, 4: 1.0}[k]
    assert chord[big].min() > 0.9 * best


@pytest.mark.parametrize("kw, match", [(dict(dim=1), "dim must be an integer >= 2"), (dict(c=0.0), "curvature"),
                                       (dict(max_radius=40.0), "max_radius must be in")])
def test_tree_initialisation_bad_arguments(kw, match):
    args = dict(dim=3) | kw
    with pytest.raises(ValueError, match=match):
        tree_initialisation(_binary_tree(3), args.pop("dim"), **args)


def test_metrics_follow_the_reference_protocol_and_both_directions(tree):
    h = read_edge_file(tree)
    r = embed(h, 3, epochs=5, batch_size=4, seed=0)
    assert (r.mean_rank, r.map) == pytest.approx(rank_metrics(r.embedding, "poincare", h.edges), rel=1e-12)
    both = rank_metrics(r.embedding, "poincare", torch.cat([h.edges, h.edges.flip(1)]))
    assert (r.mean_rank_both, r.map_both) == pytest.approx(both, rel=1e-12)


@pytest.mark.parametrize("init", ["random", "tree"])
def test_keep_best_returns_the_best_sampled_epoch_and_stops_on_patience(init):
    h = _binary_tree(7)
    scores = []  # the sampled MAP of the start (epoch 0), then after each epoch
    selector = _SampledMAP(h.edges, h.num_nodes, "poincare", 1.0, size=1000, seed=1)
    holder = {}
    import reality_stone.hierarchy as H

    real = H.ManifoldParameter

    def grab(x, m):
        holder["w"] = real(x, m)
        scores.append(selector(holder["w"]))
        return holder["w"]

    H.ManifoldParameter = grab
    try:  # from noise a rate high enough to pass the peak; the tree start is the peak (MAP 1 here)
        r = embed(h, 3, epochs=200, batch_size=8, lr=0.2, patience=3, seed=0, init=init, keep_best=True,
                  on_epoch=lambda e, loss: scores.append(selector(holder["w"])))
    finally:
        H.ManifoldParameter = real
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    assert r.best_epoch == best and r.epochs == best + 3 < 200, (scores, r.best_epoch, r.epochs)
    assert (best > 0) == (init == "random")
    assert selector(r.embedding) == scores[best]
    if init == "tree":
        assert torch.equal(r.embedding, tree_initialisation(h, 3))
    plain = embed(h, 3, epochs=r.epochs, batch_size=8, lr=0.2, keep_best=False, seed=0, init=init)
    assert plain.best_epoch is None and torch.equal(plain.embedding, holder["w"].detach())


def test_directed_hard_negatives_are_cousins():
    """Directed training: first hop up to an ancestor, second down to one of its descendants."""
    h = _binary_tree(6)
    n = h.num_nodes
    ptr, cols = _csr(h.edges, n)
    back = _csr(h.edges.flip(1), n)
    anc = torch.zeros(n, n, dtype=torch.bool)
    anc[h.edges[:, 0], h.edges[:, 1]] = True
    u = torch.randint(1, n, (400,), generator=torch.Generator().manual_seed(2))
    neg = _sample_negatives(u, n, 6, 4, ptr, cols, torch.Generator().manual_seed(0), back)
    hard = neg[:, 2:]
    # w shares an ancestor with u: some ancestor a of u has w as a descendant
    shared = (anc[u[:, None, None].expand(-1, 4, n), torch.arange(n)] & anc[hard[:, :, None].expand(-1, -1, n),
                                                                           torch.arange(n)]).any(-1)
    assert bool(shared.all())


@pytest.mark.parametrize("geometry", ["poincare", "lorentz"])
def test_tree_start_directed_training_learns_the_tree(tree, geometry):
    h = read_edge_file(tree)
    r = embed(h, 2, geometry, init="tree", epochs=40, batch_size=4, seed=0)
    assert r.map == pytest.approx(1.0) and r.best_epoch is not None, r
    assert torch.equal(r.embedding, embed(h, 2, geometry, init="tree", epochs=40, batch_size=4, seed=0).embedding)


@pytest.mark.parametrize("kw, match", [
    (dict(init="spiral"), "init must be one of"), (dict(geometry="euclidean", init="tree"), "hyperbolic construction"),
    (dict(patience=0), "patience must be"), (dict(lr=-1.0), "lr must be positive"),
    (dict(burn_in=-1), "burn_in must be"),
])
def test_embed_bad_start_arguments(tree, kw, match):
    args = dict(dim=2, geometry="poincare", epochs=1) | kw
    with pytest.raises(ValueError, match=match):
        embed(read_edge_file(tree), args.pop("dim"), args.pop("geometry"), **args)


def test_cli_embed_start_options(tree):
    runner = CliRunner()
    res = runner.invoke(app, ["embed", str(tree), "--dim", "2", "--epochs", "10", "--batch-size", "4", "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.output)
    assert row["best_epoch"] is not None and 0 < row["map"] <= 1 and 0 < row["map_both"] <= 1
    res = runner.invoke(app, ["embed", str(tree), "--dim", "2", "--epochs", "10", "--batch-size", "4", "--init",
                              "random", "--both-directions", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["best_epoch"] is None
    res = runner.invoke(app, ["embed", str(tree), "--geometry", "euclidean", "--init", "tree"])
    assert res.exit_code == 2 and "hyperbolic construction" in res.output, res.output
