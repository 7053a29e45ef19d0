"""Seed-generated basis + quantised coefficients (SeedLM-style, Shafipour et al. 2024).

Each row of the (out, in) weight is cut into blocks of C consecutive inputs (the input dim
is zero-padded to a multiple of C). A block w ∈ R^C is stored as

    seed s ∈ [0, 2^S)        — selects a basis U_s ∈ {±1}^(P×C) from a fixed generator
    exponent offset e ∈ [0, 2^E) — block scale 2^(e_top(row) − (2^E − 1) + e)
    P coefficients q ∈ [−2^(Q−1), 2^(Q−1) − 1]

and decodes to ŵ = 2^scale_exp · qᵀ U_s. Per row one int8 ``e_top`` is stored. Bits per
weight = (S + E + P·Q)/C + 8/in, plus the header: everything is counted by `nbytes`.

Generator ``basis="lfsr"`` (defined here, so files decode identically everywhere): a 16-bit
Galois LFSR with polynomial x^16 + x^14 + x^13 + x^11 + 1 (toggle mask 0xB400), state
initialised to s + 1, advanced 32 steps to decorrelate nearby seeds, then one step per
basis entry; each output bit b (the LSB shifted out) gives the entry 2b − 1; entries fill
U_s row-major (P rows of C). ``basis="packed64"`` uses the Packed64 generator instead
(seed bits → basis family, derivative orders, rotation and radius; see `packed64_basis`).

Encoding searches all 2^S seeds for every block: least squares t_s = (U_s U_sᵀ)⁺ U_s w,
quantised with the smallest power-of-two step that fits t_s in the code range and with half
that step (clamping the largest coefficient can cost less), error
‖w‖² − 2 qᵀ U_s w + qᵀ U_s U_sᵀ q; the best (s, step, q) wins. With activation statistics
(``stats``: `ActivationStats`, the input second moment H = E[x xᵀ]) it minimises the *output* error instead:
blocks are visited with GPTQ's error feedback (Frantar et al. 2022; the vector form is GPTVQ,
van Baalen et al. 2024) in act order (decreasing H-diagonal mass per block; the blocks keep
their columns, so the format does not change), the per-block metric K = A Aᵀ with A the
inverse of the C×C diagonal block of the inverse Hessian's Cholesky factor — the same search
with U_s U_sᵀ → U_s K U_sᵀ and U_s w → U_s K w.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from reality_stone.codecs.base import Capabilities, CodecConfig, Encoded, check_weight, register
from reality_stone.calibration import hessian_of
from reality_stone.codecs.bitpack import pack_bits, packed_nbytes, unpack_bits

__all__ = ["PRESETS", "SeedBasisConfig", "SeedBasisEncoded", "lfsr_basis", "lfsr_bits", "packed64_basis", "preset"]

LFSR_MASK = 0xB400
LFSR_WARMUP = 32


def lfsr_bits(seeds: Tensor, n: int) -> Tensor:
    """(len(seeds), n) output bits of the 16-bit Galois LFSR started at state seed + 1."""
    st = seeds.to(torch.int64) + 1
    for _ in range(LFSR_WARMUP):
        st = (st >> 1) ^ ((st & 1) * LFSR_MASK)
    out = torch.empty(len(seeds), n, dtype=torch.int64)
    for i in range(n):
        out[:, i] = st & 1
        st = (st >> 1) ^ ((st & 1) * LFSR_MASK)
    return out


@lru_cache(maxsize=16)
def lfsr_basis(seed_bits: int, block: int, coeffs: int) -> Tensor:
    """(2^S, P, C) float32 table of ±1 bases, U[s] for every seed s."""
    bits = lfsr_bits(torch.arange(2**seed_bits), coeffs * block)
    return (2 * bits - 1).to(torch.float32).reshape(-1, coeffs, block)


@lru_cache(maxsize=16)
def _pattern_ids(seed_bits: int, block: int, coeffs: int) -> Tensor:
    from reality_stone.kernels.seedbasis import pattern_ids

    return pattern_ids(lfsr_basis(seed_bits, block, coeffs))


@lru_cache(maxsize=16)
def packed64_basis(seed_bits: int, block: int, coeffs: int) -> Tensor:
    """(2^S, P, C) bases from the Packed64 generator, each row scaled to norm √C.

    Seed bits, LSB first: 4 → basis family, 2 → d_theta, 1 → d_r, the rest → radius
    r = (j + 0.5)/2^rest · 0.9 and angle theta = 2π·j/2^rest. Row p of U_s is the cell row
    p of the P × C field of that Packed64 seed.
    """
    from reality_stone.kernels.packed64_seed import decode_block, pack_seed

    s = torch.arange(2**seed_bits)
    rest_bits = max(0, seed_bits - 7)
    j = s >> 7 if rest_bits else torch.zeros_like(s)
    r = (j.double() + 0.5) / 2**rest_bits * 0.9
    theta = 2 * math.pi * j.double() / 2**rest_bits + 0.3
    z = torch.zeros_like(s)
    seeds = pack_seed(r, theta, s & 15, (s >> 4) & 3, (s >> 6) & 1, z, z, z)
    U = decode_block(seeds, coeffs, block, scale=torch.ones(len(s), dtype=torch.float64))
    U = U / U.norm(dim=-1, keepdim=True).clamp_min(1e-12) * math.sqrt(block)
    return U.to(torch.float32)


class SeedBasisEncoded(Encoded):
    """Per row ``e_top`` (out,) int16, per block ``seeds`` (out, nb) int16 (int32 for 16-bit seeds),
    ``e_off`` (out, nb) int8, ``codes`` (out, nb, P) int8.

    Once the fused kernel's layout is built (`kernel_layout`, on the first matmul), it is the
    only copy: it holds exactly the stored bits, and the fields above are unpacked from it on
    demand (saving, decoding), so a loaded model keeps ~0.44 bytes per weight at 3.5 bits, not
    the layout plus 0.875 bytes of fields (int64 fields, before, were 6)."""

    def __init__(self, config: SeedBasisConfig, shape, e_top: Tensor, seeds: Tensor, e_off: Tensor, codes: Tensor):
        self.config, self.shape = config, (int(shape[0]), int(shape[1]))
        self._fields: tuple[Tensor, Tensor, Tensor, Tensor] | None = (
            e_top.to(torch.int16), seeds.to(torch.int16 if config.seed_bits <= 15 else torch.int32),
            e_off.to(torch.int8), codes.to(torch.int8))

    def fields(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(e_top, seeds, e_off, codes): held, or unpacked from the kernel layout (exact)."""
        if self._fields is not None:
            return self._fields
        from reality_stone.kernels.seedbasis import unpack_all

        cfg, lay = self.config, self._layout
        seeds, e_off, codes = unpack_all(lay, self.shape[1])
        e_top = (lay.row_exp[: self.shape[0]].to(torch.int16) + (2**cfg.exp_bits - 1))
        return (e_top, seeds.to(torch.int16 if cfg.seed_bits <= 15 else torch.int32), e_off, codes)

    e_top = property(lambda self: self.fields()[0])
    seeds = property(lambda self: self.fields()[1])
    e_off = property(lambda self: self.fields()[2])
    codes = property(lambda self: self.fields()[3])

    def block_scales(self) -> Tensor:
        return torch.exp2(self.block_exponents().to(torch.float32))

    def block_exponents(self) -> Tensor:
        """(out, nb) absolute block exponents: block scale = 2^exponent."""
        return self.e_top.to(torch.int32)[:, None] - (2**self.config.exp_bits - 1) + self.e_off.to(torch.int32)

    def row_exponents(self) -> Tensor:
        """(out,) the rows' base exponents t = e_top − (2^E − 1): block scale = 2^(t + e_off)."""
        return self.e_top.to(torch.int32) - (2**self.config.exp_bits - 1)

    def kernel_layout(self):
        """The fused kernel's layout (`reality_stone.kernels.seedbasis`), built once; None if unsupported."""
        if not hasattr(self, "_layout"):
            from reality_stone.kernels.seedbasis import EXP_MAX, EXP_MIN, fusable, seedbasis_layout

            cfg, t = self.config, self.row_exponents()
            ok = fusable(cfg.block, cfg.coeffs, cfg.coeff_bits, cfg.exp_bits, cfg.seed_bits, cfg.basis) and (
                t.numel() == 0 or (EXP_MIN <= int(t.min()) and int(t.max()) <= EXP_MAX))
            self._layout = (seedbasis_layout(cfg.pattern_ids(), t, self.seeds, self.e_off, self.codes,
                                             seed_bits=cfg.seed_bits, exp_bits=cfg.exp_bits,
                                             coeff_bits=cfg.coeff_bits) if ok else None)
            if self._layout is not None:
                self._fields = None  # the layout holds the same bits (see the class docstring)
        return self._layout

    def matmul(self, x: Tensor) -> Tensor:
        """``x @ Wᵀ`` by the fused seed-basis kernel (block 8, P ≤ 8, Q ≤ 4), else decode → matmul."""
        if x.shape[-1] != self.shape[1]:
            raise ValueError(f"x has {x.shape[-1]} features, the weight expects {self.shape[1]}")
        lay = self.kernel_layout()
        if lay is None:
            return super().matmul(x)
        from reality_stone.kernels.seedbasis_ops import seedbasis_matmul

        return seedbasis_matmul(x, lay)

    def matmul_int8_activations(self, x: Tensor) -> Tensor:
        """``x @ Wᵀ`` with x quantised to int8 per 64 inputs (`kernels.seedbasis_ops.seedbasis_linear_a8`).
        float32 x; configs whose capabilities declare ``int8_activations``."""
        if not self.config.capabilities.int8_activations:
            raise ValueError(f"int8 activations need ≤ 4 coefficients of Q + E ≤ 6 bits (block 8, lfsr basis); "
                             f"this config has P={self.config.coeffs}, Q={self.config.coeff_bits}, "
                             f"E={self.config.exp_bits}")
        if x.shape[-1] != self.shape[1]:
            raise ValueError(f"x has {x.shape[-1]} features, the weight expects {self.shape[1]}")
        lay = self.kernel_layout()
        if lay is None:  # a row exponent outside the kernels' range: decode → matmul (fp32)
            return super().matmul(x)
        from reality_stone.kernels.seedbasis_ops import seedbasis_matmul

        return seedbasis_matmul(x, lay, int8_activations=True)

    def decode(self, dtype: torch.dtype = torch.float32) -> Tensor:
        out_f, in_f = self.shape
        e_top, seeds, e_off, codes = self.fields()
        U = self.config.table()
        blocks = torch.einsum("rbp,rbpc->rbc", codes.to(torch.float32), U[seeds.long()])
        exps = e_top.to(torch.int32)[:, None] - (2**self.config.exp_bits - 1) + e_off.to(torch.int32)
        return (blocks * torch.exp2(exps.to(torch.float32))[..., None]).reshape(out_f, -1)[:, :in_f].to(dtype)

    @staticmethod
    def _sizes(config, shape) -> list[int]:
        """Bytes of e_top, seeds, exponent offsets and codes."""
        out_f, in_f = shape
        n = out_f * -(-in_f // config.block)
        return [out_f, packed_nbytes(n, config.seed_bits), packed_nbytes(n, config.exp_bits) if config.exp_bits else 0,
                packed_nbytes(n * config.coeffs, config.coeff_bits)]

    def payload_nbytes(self) -> int:
        return sum(self._sizes(self.config, self.shape))

    def payload(self) -> bytes:
        cfg = self.config
        qoff = 2 ** (cfg.coeff_bits - 1)
        e_top, seeds, e_off, codes = self.fields()
        return (e_top.numpy().astype(np.int8).tobytes()
                + pack_bits(seeds, cfg.seed_bits)
                + (pack_bits(e_off, cfg.exp_bits) if cfg.exp_bits else b"")
                + pack_bits(codes.to(torch.int16) + qoff, cfg.coeff_bits))

    @classmethod
    def from_payload(cls, config: SeedBasisConfig, shape, payload: bytes) -> "SeedBasisEncoded":
        out_f, in_f = shape
        nb = -(-in_f // config.block)
        n = out_f * nb
        sizes = cls._sizes(config, shape)
        if len(payload) != sum(sizes):
            raise ValueError(f"seedbasis payload has {len(payload)} bytes, expected {sum(sizes)} (truncated or corrupt)")
        o = 0
        e_top = torch.from_numpy(np.frombuffer(payload[:out_f], dtype=np.int8).astype(np.int64))
        o += sizes[0]
        seeds = unpack_bits(payload[o : o + sizes[1]], config.seed_bits, n).reshape(out_f, nb)
        o += sizes[1]
        e_off = (unpack_bits(payload[o : o + sizes[2]], config.exp_bits, n) if config.exp_bits
                 else torch.zeros(n, dtype=torch.int64)).reshape(out_f, nb)
        o += sizes[2]
        codes = unpack_bits(payload[o:], config.coeff_bits, n * config.coeffs) - 2 ** (config.coeff_bits - 1)
        enc = cls(config, shape, e_top, seeds, e_off, codes.reshape(out_f, nb, config.coeffs))
        # |ŵ| ≤ 2^exponent · P · 2^(Q−1) · max|U|: a stored exponent that overflows float32 would
        # decode to Inf (and the kernel would compute with it), so it is corrupt data
        if n:
            top = int(enc.block_exponents().max())
            bound = math.log2(config.coeffs * 2 ** (config.coeff_bits - 1) * float(config.table().abs().max()))
            if top + bound >= 128:
                raise ValueError(f"corrupt seedbasis payload: block exponent {top} overflows float32")
        enc.kernel_layout()  # a loaded weight keeps only the layout (the stored bits), not the fields too
        return enc


@register("seedbasis", SeedBasisEncoded)
@dataclass(frozen=True)
class SeedBasisConfig(CodecConfig):
    """Seed-generated ±1 bases + quantised coefficients (SeedLM); output-error-aware with calibration;
    presets 4.25 / 3.5 / 2.5.

    Use when: the best quality per bit at 2.5–4.25 bits on real LLMs, with calibration text
    (sequential, output-error-aware); presets 4.25 / 3.5 / 2.5.
    """

    calibration: ClassVar[str] = "optional"
    PRESETS: ClassVar[dict[str, dict]] = {}  # filled below the class
    DAMP: ClassVar[float] = 0.01  # Hessian damping (fraction of its mean diagonal), as GPTQ's default
    LAZY_COLUMNS: ClassVar[int] = 128  # error feedback batched over this many columns (GPTQ's blocksize)
    error_bound: ClassVar[float] = 0.18  # default (4.25-bit) config (measured ≤ 0.134)

    block: int = 8
    seed_bits: int = 8
    coeffs: int = 6
    coeff_bits: int = 4
    exp_bits: int = 2
    basis: str = "lfsr"
    chunk: int = 0  # blocks per batched search; 0 = auto (keeps the seed × block temporaries cache-sized)

    def __post_init__(self):
        ints = dict(block=self.block, seed_bits=self.seed_bits, coeffs=self.coeffs, coeff_bits=self.coeff_bits,
                    exp_bits=self.exp_bits, chunk=self.chunk)
        for name, v in ints.items():
            if not (isinstance(v, int) and not isinstance(v, bool)):
                raise ValueError(f"{name} must be an integer, got {v!r}")
        if not 2 <= self.block <= 64:
            raise ValueError(f"block must be in [2, 64], got {self.block}")
        if not 1 <= self.seed_bits <= 16:
            raise ValueError(f"seed_bits must be in [1, 16], got {self.seed_bits}")
        if not 1 <= self.coeffs <= self.block:
            raise ValueError(f"coeffs must be in [1, block], got {self.coeffs}")
        if not 2 <= self.coeff_bits <= 8:
            raise ValueError(f"coeff_bits must be in [2, 8], got {self.coeff_bits}")
        if not 0 <= self.exp_bits <= 6:
            raise ValueError(f"exp_bits must be in [0, 6], got {self.exp_bits}")
        if self.basis not in ("lfsr", "packed64"):
            raise ValueError(f"basis must be 'lfsr' or 'packed64', got {self.basis!r}")
        if self.chunk < 0:
            raise ValueError("chunk must be >= 0 (0 = auto)")

    @cached_property  # the config is frozen; matmul_int8_activations asks on every call
    def capabilities(self) -> Capabilities:
        from reality_stone.kernels.seedbasis import a8_fusable, fusable

        # the kernel's exponent range is checked per weight (a decoded exponent outside it takes
        # decode → matmul); every exponent a finite float32 weight produces is inside it
        fused = fusable(self.block, self.coeffs, self.coeff_bits, self.exp_bits, self.seed_bits, self.basis)
        return Capabilities(calibration=self.calibration, fused_matmul=fused,
                            int8_activations=fused and a8_fusable(self.coeffs, self.coeff_bits, self.exp_bits,
                                                                  self.seed_bits))

    @property
    def block_bits(self) -> int:
        return self.seed_bits + self.exp_bits + self.coeffs * self.coeff_bits

    def search_chunk(self) -> int:
        """Blocks searched at once: ``chunk``, or ~2^18 / 2^S (measured fastest at S = 8 … 12)."""
        return self.chunk or max(64, min(2048, 2**18 // 2**self.seed_bits))

    def nominal_bpw(self) -> float:
        """(S + E + P·Q)/C: bits per weight before the per-row exponent and the header."""
        return self.block_bits / self.block

    def nominal_bits_per_weight(self) -> float:
        return self.nominal_bpw()

    def ladder(self) -> tuple["SeedBasisConfig", ...]:
        """This config and the `LADDER` configs within one bit per weight of it (same basis)."""
        own = self.nominal_bpw()
        rungs = [SeedBasisConfig(**kw, basis=self.basis) for kw in LADDER.values()]
        return (self, *sorted((c for c in rungs if abs(c.nominal_bpw() - own) <= 1 and c != dataclasses.replace(
            self, chunk=0)), key=SeedBasisConfig.nominal_bpw))

    def table(self) -> Tensor:
        fn = lfsr_basis if self.basis == "lfsr" else packed64_basis
        return fn(self.seed_bits, self.block, self.coeffs)

    def pattern_ids(self) -> Tensor:
        """(2^S, P) uint8 sign-pattern ids of the ±1 table, for the kernel (one per config)."""
        return _pattern_ids(self.seed_bits, self.block, self.coeffs)

    # ----------------------------------------------------------------------------- search
    def _search(self, w: Tensor, U: Tensor, G: Tensor, Gi: Tensor, e_lo: Tensor | None, e_hi: Tensor | None,
                K: Tensor | None = None):
        """Best (seed, exponent, codes) for blocks w (n, C) against bases U (ns, P, C) in the metric K.

        The error of a fit ŵ is ‖w − ŵ‖²_K = (w − ŵ) K (w − ŵ)ᵀ (K (C, C); None = identity).
        ``G = U K Uᵀ`` per seed and ``Gi`` its (pseudo-)inverse, so the least-squares coefficients
        are Gi U K wᵀ. ``e_lo/e_hi`` (n,) bound the exponent (None: unbounded). Returns seed (n,),
        exponent (n,), codes (n, P) int64, error ‖w − ŵ‖²_K (n,). Runs the compiled search
        (`kernels/seedbasis_search_cpu.cpp`, blocks as the SIMD dimension, ±1 bases through
        sign-pattern sums) for blocks of 8 when the extension is available, else
        `_search_reference` in chunks of `search_chunk` blocks.
        """
        from reality_stone.kernels.extension import load_extension

        if K is None:  # data-free: whole layers at once, so no float64 copy
            z = w.float()
            wsq = (z * z).sum(-1)
        else:
            wd = w.double()
            z = wd @ K.double()
            wsq = (z * wd).sum(-1).float()
            z = z.float()
        fused = U.shape[2] == 8 and U.shape[1] <= 8
        ext = load_extension(quiet=True) if fused else None
        if ext is None:
            k = self.search_chunk()
            parts = [self._search_reference(z[i : i + k], U, G, Gi, None if e_lo is None else e_lo[i : i + k],
                                            None if e_hi is None else e_hi[i : i + k])
                     for i in range(0, max(len(z), 1), k)]
            seed, e, q, err = (torch.cat(x) for x in zip(*parts))
            return seed, e, q, err + wsq
        none = torch.empty(0)
        # callers pass the table or a prefix of it (the kernel checks the patterns against U)
        pattern = self.pattern_ids()[: len(U)] if self.basis == "lfsr" else none
        seed, e, q, err = ext.seedbasis_search(z.contiguous(), U.contiguous(), pattern, G.contiguous(), Gi.contiguous(),
                                               none if e_lo is None else e_lo.float().contiguous(),
                                               none if e_hi is None else e_hi.float().contiguous(), self.coeff_bits)
        return seed, e, q, err + wsq

    def _search_reference(self, z: Tensor, U: Tensor, G: Tensor, Gi: Tensor, e_lo: Tensor | None,
                          e_hi: Tensor | None):
        """`_search` in plain torch for z = w K (n, C) (the oracle of the compiled search; tensors laid
        out (seed, P, block) so every product is one batched matmul over seeds). The error returned
        lacks the constant ‖w‖²_K."""
        qmax = 2 ** (self.coeff_bits - 1) - 1
        qmin = -qmax - 1
        b = U @ z.T.contiguous()  # (s, P, n): U_s K w
        t = Gi @ b  # least-squares coefficients
        # smallest step that fits the coefficients in [qmin, qmax] (the range is asymmetric)
        need = torch.maximum(t.amax(1) / qmax, t.amin(1) / qmin).clamp_min(1e-30)
        # the tolerance keeps float32 rounding of an exact power of two from costing a step
        e_fit = torch.ceil(torch.log2(need) - 1e-5)
        for k in (0, 1):  # that step and half of it: clamping the largest coefficient can cost less
            e = e_fit - k
            if e_lo is not None:
                e = torch.maximum(torch.minimum(e, e_hi), e_lo)
            scale = torch.exp2(e)[:, None]
            q = torch.round(t / scale).clamp_(qmin, qmax)
            qs = q * scale
            err = (qs * (G @ qs - 2 * b)).sum(1)  # ‖w − qsᵀU_s‖²_K − ‖w‖²_K, (s, n)
            if k == 0:
                best_e, best_q, best_err = e, q, err
            else:  # the half step only when strictly better
                lt = err < best_err
                best_e, best_q, best_err = (torch.where(lt, e, best_e), torch.where(lt[:, None], q, best_q),
                                            torch.where(lt, err, best_err))
        best = best_err.argmin(0)
        idx = torch.arange(len(z))
        return best, best_e[best, idx], best_q[best, :, idx].to(torch.int64), best_err[best, idx]

    def _tables(self, U: Tensor, K: Tensor | None = None, singular: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """G = U K Uᵀ per seed (K = identity when None), its inverse Gi, and which seeds' G is
        (numerically) singular. K may be a batch (m, C, C) of metrics: then G, Gi are (m, ns, P, P).

        Full-rank G by a batched inverse, the singular ones (±1 bases with dependent rows: a few %
        of the seeds) by the pseudo-inverse. ``singular``: reuse a mask found for the same bases in
        another metric (a positive-definite K keeps the rank)."""
        Ud = U.double()
        Ut = Ud.transpose(1, 2)
        if K is None:
            Gd = Ud @ Ut
        elif K.dim() == 2:
            Gd = (Ud @ K.double()) @ Ut
        else:
            Gd = (Ud @ K.double()[:, None]) @ Ut
        if singular is None:
            if K is not None and K.dim() == 3:
                raise ValueError("a batch of metrics needs the singular mask of the bases")
            L, info = torch.linalg.cholesky_ex(Gd)
            pivot = L.diagonal(dim1=-2, dim2=-1).square().amin(-1)
            singular = (info != 0) | (pivot < 1e-10 * Gd.diagonal(dim1=-2, dim2=-1).amax(-1))
        Gi = torch.linalg.inv_ex(Gd)[0]
        if bool(singular.any()):
            Gi[..., singular, :, :] = torch.linalg.pinv(Gd[..., singular, :, :], hermitian=True)
        return Gd.to(torch.float32).contiguous(), Gi.to(torch.float32).contiguous(), singular

    def encode(self, weight: Tensor, stats=None) -> "SeedBasisEncoded":
        """Data-free (``stats=None``) or output-error-aware (``stats``: `ActivationStats` of the layer's inputs)."""
        check_weight(weight)
        out_f, in_f = weight.shape
        hessian = None if stats is None else hessian_of(stats, in_f)
        C = self.block
        nb = -(-in_f // C)
        W = torch.zeros(out_f, nb * C, dtype=torch.float32)
        W[:, :in_f] = weight.detach().float()
        U = self.table()
        G, Gi, singular = self._tables(U)
        E = 2**self.exp_bits - 1
        # Pass 1 (data-free search, unbounded exponent) fixes each row's exponent window. The
        # data-aware pass re-searches every block anyway (its error feedback moves the weights),
        # so there pass 1 only estimates the window, from the first 256 seeds.
        n1 = len(U) if hessian is None else min(len(U), 256)
        blocks = W.reshape(-1, C)
        seeds, exps, codes, _ = self._search(blocks, U[:n1], G[:n1], Gi[:n1], None, None)
        e_top = exps.reshape(out_f, nb).amax(1).clamp(-128, 127)
        if hessian is None:
            if bool((exps.reshape(out_f, nb) < (e_top - E)[:, None]).any()):
                hi = e_top.repeat_interleave(nb).float()
                seeds, exps, codes, _ = self._search(blocks, U, G, Gi, hi - E, hi)
        else:
            seeds, exps, codes = self._gptq(W, in_f, hessian, self.DAMP, U, e_top, singular)
        e_off = (exps.reshape(out_f, nb) - (e_top - E)[:, None]).to(torch.int64)
        return SeedBasisEncoded(self, (out_f, in_f), e_top.to(torch.int64), seeds.reshape(out_f, nb),
                                e_off, codes.reshape(out_f, nb, self.coeffs))

    def _gptq(self, W: Tensor, in_f: int, hessian: Tensor, damp: float, U: Tensor, e_top: Tensor, singular: Tensor):
        """Block quantisation with GPTQ error feedback (output-error aware), blocks taken in
        act order: by decreasing input energy (the Hessian diagonal summed over the block), so the
        blocks that matter most are fitted first and the rest absorb their error. The blocks keep
        their columns, so only the visiting order changes, never the format. Returns seeds,
        exponents and codes in row-major block order."""
        out_f, n_in = W.shape
        C, E = self.block, 2**self.exp_bits - 1
        nb = n_in // C
        if hessian.shape != (in_f, in_f) or not bool(torch.isfinite(hessian).all()):
            raise ValueError(f"hessian must be a finite ({in_f}, {in_f}) matrix, got {tuple(hessian.shape)}")
        H = torch.zeros(n_in, n_in, dtype=torch.float64)
        H[:in_f, :in_f] = hessian.double()
        order = torch.argsort(H.diagonal().clamp_min(0).reshape(nb, C).sum(1), descending=True, stable=True)
        cols = (order[:, None] * C + torch.arange(C)).reshape(-1)
        H, W = H[cols][:, cols], W[:, cols]
        dead = H.diagonal() <= 0
        H[dead, dead] = 1.0  # padded / never-active inputs: any value is fine, keep H invertible
        H += damp * H.diagonal().mean() * torch.eye(n_in, dtype=torch.float64)
        # Upper Cholesky factor of H⁻¹, as in GPTQ: H⁻¹ = Rᵀ R.
        R = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
        Wd = W.double().clone()
        lo_all = (e_top - E).float()
        hi_all = e_top.float()
        Ud = U.double()
        seeds, exps, codes = [], [], []
        lazy = max(C, self.LAZY_COLUMNS // C * C)  # whole blocks
        for j0 in range(0, n_in, lazy):
            # GPTQ's lazy batches: feedback inside the batch at once, to the columns past it once
            j1 = min(j0 + lazy, n_in)
            errs = []
            cols = range(j0, j1, C)
            # the batch's metrics and tables at once (one batched inverse instead of one per column)
            A = torch.linalg.inv(torch.stack([R[j : j + C, j : j + C] for j in cols]))  # metric: ‖(w − ŵ) A‖
            K = A @ A.transpose(1, 2)
            G, Gi, _ = self._tables(U, K, singular)
            for k, j in enumerate(cols):
                w = Wd[:, j : j + C]
                s, e, q, _ = self._search(w, U, G[k], Gi[k], lo_all, hi_all, K[k])
                what = torch.exp2(e.double())[:, None] * torch.einsum("np,npc->nc", q.double(), Ud[s])
                err = (w - what) @ A[k]  # whitened error, as GPTQ's (w - q) / d
                Wd[:, j + C : j1] -= err @ R[j : j + C, j + C : j1]
                errs.append(err)
                seeds.append(s)
                exps.append(e)
                codes.append(q)
            if j1 < n_in:
                Wd[:, j1:] -= torch.cat(errs, 1) @ R[j0:j1, j1:]
        back = torch.argsort(order)  # visiting order -> column order
        st = lambda xs: torch.stack(xs, 1)[:, back].reshape(-1, *xs[0].shape[1:])  # noqa: E731  (row-major blocks)
        return st(seeds), st(exps), st(codes)


# Presets at the three budgets (nominal bits per weight; + 8/in for the row exponent).
# Chosen by benchmarks/seedbasis_presets.py (data-aware output error on three SmolLM2 layers,
# calibration text only): at 3.5 and 2.5 bits, exponent bits are worth less than 4× the seeds
# (0.069 vs 0.090 and 0.123 vs 0.141); at 4.25 the only way to S = 10 drops the exponent
# (0.072 vs 0.042), so it stays at S = 8.
PRESETS = {
    "4.25": dict(block=8, seed_bits=8, coeffs=6, coeff_bits=4, exp_bits=2),
    "3.5": dict(block=8, seed_bits=10, coeffs=4, coeff_bits=4, exp_bits=2),
    "2.5": dict(block=8, seed_bits=10, coeffs=3, coeff_bits=3, exp_bits=1),
}
SeedBasisConfig.PRESETS.update(PRESETS)

# Rungs a mixed allocation picks from (`SeedBasisConfig.ladder`): blocks of 8, 16 … 40 bits. The
# presets, and between them more coefficients (P) at 4 bits with 10 seed bits; at 3.0 and 2.0
# two ways to spend the bits (the allocation measures each rung on the model and keeps the better).
LADDER = {
    "2.0": dict(block=8, seed_bits=9, coeffs=2, coeff_bits=3, exp_bits=1),
    "2.0b": dict(block=8, seed_bits=8, coeffs=2, coeff_bits=3, exp_bits=2),
    "2.5": PRESETS["2.5"],
    "3.0": dict(block=8, seed_bits=10, coeffs=3, coeff_bits=4, exp_bits=2),
    "3.0b": dict(block=8, seed_bits=10, coeffs=4, coeff_bits=3, exp_bits=2),
    "3.5": PRESETS["3.5"],
    "4.0": dict(block=8, seed_bits=10, coeffs=5, coeff_bits=4, exp_bits=2),
    "4.25": PRESETS["4.25"],
    "4.5": dict(block=8, seed_bits=10, coeffs=6, coeff_bits=4, exp_bits=2),
    "5.0": dict(block=8, seed_bits=10, coeffs=7, coeff_bits=4, exp_bits=2),
}


def preset(bpw: str, **overrides) -> SeedBasisConfig:
    """One of `PRESETS` ("4.25", "3.5", "2.5"), with optional field overrides (= ``codec_config("seedbasis", preset=bpw)``)."""
    from reality_stone.codecs.base import codec_config

    return codec_config("seedbasis", preset=bpw, **overrides)
