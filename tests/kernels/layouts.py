"""Encoded weights with random fields, for the kernel tests: every field value is a valid weight,
so these exercise layouts no encoder happens to produce."""

import torch

from reality_stone.codecs.packed64 import Packed64Config, Packed64Encoded, pack_seed
from reality_stone.codecs.seedbasis import SeedBasisEncoded, preset


def seedbasis_weight(rows, cols, budget="3.5", seed=0, e_top=-6):
    """A seed-basis weight with random fields (any field value is a valid weight)."""
    cfg = preset(budget)
    g = torch.Generator().manual_seed(seed)
    nb, qmax = -(-cols // 8), 2 ** (cfg.coeff_bits - 1)
    return SeedBasisEncoded(cfg, (rows, cols), torch.full((rows,), e_top, dtype=torch.int64),
                            torch.randint(0, 2**cfg.seed_bits, (rows, nb), generator=g),
                            torch.randint(0, 2**cfg.exp_bits, (rows, nb), generator=g),
                            torch.randint(-qmax, qmax, (rows, nb, cfg.coeffs), generator=g))


def packed64_weight(rows, cols, block=8, min_block=None, formula="polar", seed=0):
    """A Packed64 weight with a random quadtree and random seed fields (every field value is a
    valid weight; r ≤ 0.9 keeps J = (1 − r²)^-2 ≤ 28, as real encodings do)."""
    g = torch.Generator().manual_seed(seed)
    mb = block if min_block is None else min_block
    split_bits, n_leaves = [], 0

    def walk(size):
        nonlocal n_leaves
        split = size > mb and bool(torch.rand(1, generator=g) < 0.4)
        if size > mb:
            split_bits.append(split)
        if split:
            for _ in range(4):
                walk(size // 2)
        else:
            n_leaves += 1

    for _ in range(-(-rows // block) * -(-cols // block)):
        walk(block)
    n = n_leaves
    ints = {name: torch.randint(lo, hi + 1, (n,), generator=g) for name, (lo, hi) in
            dict(basis=(0, 15), d_theta=(0, 3), d_r=(0, 1), rot=(0, 15), log2_c=(-4, 3)).items()}
    seeds = pack_seed(torch.rand(n, generator=g, dtype=torch.float64) * 0.9,
                      torch.rand(n, generator=g, dtype=torch.float64) * 7, reserved=torch.zeros(n, dtype=torch.int64),
                      **ints)
    cfg = Packed64Config(block=block, min_block=mb, formula=formula)
    scales = (torch.randn(n, generator=g) * 0.05).half()
    return Packed64Encoded(cfg, (rows, cols), torch.tensor(split_bits, dtype=torch.bool), seeds, scales)
