"""Throughput of the Poincaré ops, ours vs geoopt, same process, same inputs.

    python benchmarks/geometry.py            # -> benchmarks/results/geometry.{json,md}

(65536, 64) float32 batches, c = 1; forward only; median of 25 runs after warm-up, the
three variants timed round-robin.
Ours is timed with check=False (what a training loop uses) and with check=True (input
validation: finiteness and ball membership, one extra pass over the inputs).
"""

from __future__ import annotations

import platform

import geoopt
import torch

from reality_stone.geometry import poincare as P
from harness import arguments, parse, round_robin, write_json, write_markdown



def main() -> None:
    parse(arguments(__doc__, threads=2))
    torch.manual_seed(0)
    n, d = 65536, 64
    ball = geoopt.PoincareBall(c=1.0)
    k = torch.tensor(-1.0)
    x = P.random_point(n, d, c=1.0, std=0.3)
    y = P.random_point(n, d, c=1.0, std=0.3)
    u = torch.randn(n, d) * 0.1
    m = torch.randn(d, d) / d**0.5
    gm = geoopt.manifolds.stereographic.math
    ops = {
        "mobius_add": (lambda ck: P.mobius_add(x, y, c=1.0, check=ck), lambda: ball.mobius_add(x, y)),
        "mobius_matvec": (lambda ck: P.mobius_matvec(m, x, c=1.0, check=ck), lambda: ball.mobius_matvec(m, x)),
        "expmap0": (lambda ck: P.expmap0(u, c=1.0, check=ck), lambda: ball.expmap0(u)),
        "logmap0": (lambda ck: P.logmap0(x, c=1.0, check=ck), lambda: ball.logmap0(x)),
        "dist": (lambda ck: P.dist(x, y, c=1.0, check=ck), lambda: gm.dist(x, y, k=k)),
    }
    rows = []
    for name, (ours, theirs) in ops.items():
        t = round_robin(dict(geoopt=theirs, ours=lambda: ours(False), checked=lambda: ours(True)), repeat=25, warmup=3)
        t_geo, t_ours, t_chk = t["geoopt"], t["ours"], t["checked"]
        rows.append(dict(op=name, geoopt_ms=t_geo * 1e3, ours_ms=t_ours * 1e3, ours_checked_ms=t_chk * 1e3,
                         speedup=t_geo / t_ours, speedup_checked=t_geo / t_chk))
        print(f"{name:14s} geoopt {t_geo*1e3:7.2f} ms  ours {t_ours*1e3:7.2f} ms ({t_geo/t_ours:.2f}x)  "
              f"checked {t_chk*1e3:7.2f} ms ({t_geo/t_chk:.2f}x)")
    meta = dict(shape=[n, d], dtype="float32", threads=torch.get_num_threads(), torch=torch.__version__,
                geoopt=geoopt.__version__, machine=platform.machine(), processor=platform.processor())
    write_json("geometry", dict(meta=meta, results=rows))
    lines = ["| op | geoopt (ms) | ours (ms) | speed-up | ours, check=True (ms) | speed-up |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['geoopt_ms']:.2f} | {r['ours_ms']:.2f} | {r['speedup']:.2f}× | "
                     f"{r['ours_checked_ms']:.2f} | {r['speedup_checked']:.2f}× |")
    write_markdown("geometry", lines)


if __name__ == "__main__":
    main()
