"""Hostile Reality Stone files: mutate a good file, optionally re-sign it (recompute every
checksum and the metadata digest, as a buggy writer or an attacker would), load it, classify.

Used by tests/models/test_hardening.py (targeted cases) and test_fuzz_files.py (thousands of
seeded mutations, run here as ``python hostile_files.py worker SPEC.json`` in subprocesses so
that one crash cannot hide the rest).

Outcomes of one load:
* ``error``   — a clean ValueError (or FileNotFoundError);
* ``correct`` — it loaded and is right: an un-re-signed mutation must give the original outputs
  bit for bit (it can only have touched bytes that do not matter); a re-signed one is a valid
  file with other contents, so each compressed layer's fused forward must agree with its own
  decoded weight and the decoded weight must be finite;
* ``defect``  — anything else: another exception type, wrong outputs, a crash (signal), a
  hang, or more memory than the bound (`MAX_RSS_GROWTH`).
"""

from __future__ import annotations

import json
import random
import resource
import struct
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

import reality_stone as rs
from reality_stone.calibration import ActivationStats
from reality_stone.codecs import codec_config
from reality_stone.codecs.base import MAGIC
from reality_stone.models.format import ENCODED_SUFFIX, TORCH_DTYPES, _meta_digest, tensor_checksum
from reality_stone.nn import CompressedLinear

MAX_RSS_GROWTH = 512 << 20  # bytes of peak-RSS growth one load of a <1 MB file may cause
ADDRESS_SPACE_HEADROOM = 4 << 30  # hard limit above the worker's start: an allocation bomb fails, not the machine

# one layer per codec (and codec variant) in the plain model; (name, options, needs stats)
PLAIN_CODECS = [
    ("rtn", dict(bits=4, group=32), False),
    ("rtn", dict(bits=3, group=64, symmetric=True), False),
    ("hqq", dict(bits=4, group=64), False),
    ("gptq", dict(bits=4, group=32), True),
    ("lowrank", dict(rank=6, sparse=0.05), False),
    ("rbe", dict(block=8, bpw=3.0), False),
    ("rbe", dict(block=8, bpw=3.0, basis="packed64", value_dtype="int8"), False),
    ("packed64", dict(), False),
    ("seedbasis", dict(preset="3.5"), True),
    ("seedbasis", dict(preset="2.5"), False),
]
WIDTH = 64


def plain_template() -> nn.Module:
    return nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in PLAIN_CODECS])


def plain_model() -> nn.Module:
    """`plain_template` with every layer compressed by one entry of `PLAIN_CODECS`."""
    g = torch.Generator().manual_seed(0)
    model = plain_template()
    x = torch.randn(512, WIDTH, generator=g, dtype=torch.float64)
    stats = ActivationStats(x.T @ x / len(x), len(x))
    for i, (name, opts, needs_stats) in enumerate(PLAIN_CODECS):
        lin = model[i]
        W = torch.randn(WIDTH, WIDTH, generator=g) * 0.1
        enc = codec_config(name, **opts).encode(W, stats if needs_stats else None)
        model[i] = CompressedLinear(enc, lin.bias.detach())
    return model


def llama_model() -> nn.Module:
    from reality_stone.evaluation.loaders import tiny_llama

    model = tiny_llama()
    rs.compress(model, codec_config("rtn", bits=4, group=32),
                per_layer={"*mlp*": codec_config("seedbasis", preset="3.5"), "*o_proj": codec_config("hqq", bits=3, group=64)})
    return model


# -- reading and re-signing -------------------------------------------------------------------

def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def tensor_data(header: dict, body: bytes, name: str) -> bytes:
    b0, b1 = header[name]["data_offsets"]
    return body[b0:b1]


def resign(header: dict, body: bytes) -> dict:
    """Recompute every tensor checksum (from the header's dtype and shape) and the metadata digest."""
    meta = header["__metadata__"]
    sums = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            sums[name] = tensor_checksum(info["dtype"], info["shape"], tensor_data(header, body, name))
        except Exception:  # a deliberately broken entry: leave it for the reader to refuse
            continue
    try:
        old = json.loads(meta.get("checksums", "{}"))
    except ValueError:
        old = None
    if isinstance(old, dict):
        meta["checksums"] = json.dumps({k: sums.get(k, v) for k, v in old.items()}, sort_keys=True)
    meta["metadata_sha256"] = _meta_digest(meta)
    return header


def replace_tensor(header: dict, body: bytes, name: str, data: bytes) -> tuple[dict, bytes]:
    """``name``'s bytes replaced by ``data`` (other offsets shifted); its header shape follows for U8 blobs."""
    b0, b1 = header[name]["data_offsets"]
    delta = len(data) - (b1 - b0)
    for info in header.values():
        if isinstance(info, dict) and "data_offsets" in info and info["data_offsets"][0] >= b1:
            info["data_offsets"] = [info["data_offsets"][0] + delta, info["data_offsets"][1] + delta]
    header[name]["data_offsets"] = [b0, b0 + len(data)]
    if header[name]["dtype"] == "U8":
        header[name]["shape"] = [len(data)]
    return header, body[:b0] + data + body[b1:]


def blob_parts(blob: bytes) -> tuple[dict, tuple[int, int], bytes]:
    version, n = struct.unpack_from("<BI", blob, len(MAGIC))
    start = len(MAGIC) + 5
    meta = json.loads(blob[start : start + n])
    shape = struct.unpack_from("<II", blob, start + n)
    return meta, shape, blob[start + n + 8 :]


def make_blob(meta: dict, shape, payload: bytes) -> bytes:
    m = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<BI", 1, len(m)) + m + struct.pack("<II", *shape) + payload


# -- mutations ----------------------------------------------------------------------------------

HOSTILE_INTS = [0, -1, 1, 2, 3, 7, 8, 9, 16, 127, 128, 255, 4096, 4194304, 2**31, 2**31 - 1, 2**32, -64, 10**6]
HOSTILE_VALUES = HOSTILE_INTS + [None, True, False, 0.5, 3.5, -2.0, float("nan"), "x", "", [], {}, [1, 2], {"a": 1}]
KINDS = ["flip_header", "flip_data", "truncate", "flip_blob_resign", "flip_dense_resign", "blob_config_resign",
         "blob_shape_resign", "meta_resign", "tensor_header_resign"]
RESIGNED = {k for k in KINDS if k.endswith("_resign")}


def _hostile(rng: random.Random):
    return rng.choice(HOSTILE_VALUES)


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    header, body = split(data)
    n_head = len(data) - len(body)
    tensors = sorted(k for k in header if k != "__metadata__")
    blobs = [k for k in tensors if k.endswith(ENCODED_SUFFIX)]
    dense = [k for k in tensors if not k.endswith(ENCODED_SUFFIX)]
    if kind == "flip_header":
        out = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            out[rng.randrange(0, n_head)] = rng.randrange(256)
        return bytes(out)
    if kind == "flip_data":
        out = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            out[rng.randrange(n_head, len(data))] = rng.randrange(256)
        return bytes(out)
    if kind == "truncate":
        return data[: rng.randrange(0, len(data))]
    if kind == "flip_blob_resign":
        name = rng.choice(blobs)
        blob = bytearray(tensor_data(header, body, name))
        for _ in range(rng.randint(1, 4)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        header, body = replace_tensor(header, body, name, bytes(blob))
    elif kind == "flip_dense_resign":
        name = rng.choice(dense)
        t = bytearray(tensor_data(header, body, name))
        if t:
            for _ in range(rng.randint(1, 4)):
                t[rng.randrange(len(t))] = rng.randrange(256)
        header, body = replace_tensor(header, body, name, bytes(t))
    elif kind == "blob_config_resign":
        name = rng.choice(blobs)
        meta, shape, payload = blob_parts(tensor_data(header, body, name))
        cfg = meta["config"]
        key = rng.choice(sorted(cfg))
        cfg[key] = _hostile(rng) if rng.random() < 0.5 else rng.choice(HOSTILE_INTS)
        if rng.random() < 0.3:  # sometimes also resize the payload to what the new config expects
            payload = payload[: rng.randrange(len(payload) + 1)] + bytes(rng.randrange(64))
        header, body = replace_tensor(header, body, name, make_blob(meta, shape, payload))
    elif kind == "blob_shape_resign":
        name = rng.choice(blobs)
        meta, shape, payload = blob_parts(tensor_data(header, body, name))
        shape = list(shape)
        i = rng.randrange(2)
        shape[i] = rng.choice([1, 2**31, 2**32 - 1, shape[i] * 2, shape[i] + 1, max(1, shape[i] - 1), 2**20])
        header, body = replace_tensor(header, body, name, make_blob(meta, shape, payload))
        if rng.random() < 0.5:  # keep the metadata consistent with it too
            layer = name[: -len(ENCODED_SUFFIX)]
            comp = json.loads(header["__metadata__"]["compressed"])
            comp[layer]["shape"] = shape
            header["__metadata__"]["compressed"] = json.dumps(comp, sort_keys=True)
    elif kind == "meta_resign":
        meta = header["__metadata__"]
        field = rng.choice(["architecture", "compressed", "aliases", "checksums", "source", "format_version"])
        if field == "format_version":
            meta[field] = str(rng.choice(["0", "1", "3", "-1", "x", "2.0"]))
        else:
            value = json.loads(meta[field])
            op = rng.random()
            if op < 0.25 or not isinstance(value, dict) or not value:
                value = _hostile(rng)
            elif field == "architecture":
                cfg = value["config"]
                ints = [k for k, v in cfg.items() if isinstance(v, int) and not isinstance(v, bool)]
                key = rng.choice(ints or sorted(cfg))
                cfg[key] = rng.choice(HOSTILE_INTS) if rng.random() < 0.8 else _hostile(rng)
            else:
                key = rng.choice(sorted(value))
                if field == "compressed" and isinstance(value[key], dict) and rng.random() < 0.7:
                    sub = rng.choice(["shape", "codec", "bits_per_weight"])
                    value[key][sub] = rng.choice([None, "rtn", "nope", [1, 2], [2**31, 1], -3, [64], [64, 64, 1]])
                elif rng.random() < 0.5:
                    value[key] = _hostile(rng)
                else:  # an extra entry pointing at another stored tensor
                    other = rng.choice(tensors)
                    value[rng.choice(tensors + ["x.weight", key])] = other if field == "aliases" else value[key]
            meta[field] = json.dumps(value, allow_nan=True)
    elif kind == "tensor_header_resign":
        name = rng.choice(tensors)
        info = header[name]
        r = rng.random()
        if r < 0.5:
            info["dtype"] = rng.choice(sorted(TORCH_DTYPES) + ["F8_E4M3", "C64", "Q4"])
            size = TORCH_DTYPES.get(info["dtype"], torch.uint8).itemsize
            nbytes = info["data_offsets"][1] - info["data_offsets"][0]
            if nbytes % size == 0 and rng.random() < 0.8:  # a byte count the new dtype can hold
                info["shape"] = [nbytes // size]
                if info["dtype"] == "BOOL" or rng.random() < 0.3:
                    pass
        elif r < 0.8:
            n = 1
            for d in info["shape"]:
                n *= d
            info["shape"] = rng.choice([[n], [1, n], list(reversed(info["shape"])), [n, 1], [0], [2**40, 0]])
        else:
            info["data_offsets"] = [info["data_offsets"][0], info["data_offsets"][1] + rng.choice([-8, -1, 1, 8])]
    return join(resign(header, body), body)


# -- the worker ---------------------------------------------------------------------------------

def _consistent(model: nn.Module, x_dim: int) -> str | None:
    """None if every compressed layer's forward agrees with its decoded weight, else why not."""
    g = torch.Generator().manual_seed(1)
    for name, mod in model.named_modules():
        if not isinstance(mod, CompressedLinear):
            continue
        W = mod.encoded.decode()
        if not bool(torch.isfinite(W).all()):
            return f"{name}: decoded weight not finite"
        for b in (1, 9, 70):
            x = torch.randn(b, mod.in_features, generator=g)
            y = mod(x)
            ref = x @ W.T + (mod.bias if mod.bias is not None else 0)
            scale = float(x.abs().sum(-1).max()) * float(W.abs().max()) + 1e-6
            if not bool(torch.isfinite(y).all()) or float((y - ref).abs().max()) > 1e-4 * scale:
                return f"{name}: fused forward differs from the decoded weight at batch {b}"
    return None


def _outputs(model: nn.Module, mode: str) -> torch.Tensor:
    with torch.no_grad():
        if mode.startswith("llama"):
            ids = torch.arange(12).reshape(1, 12) * 7 % 256
            return model(ids).logits
        return model(torch.linspace(-1, 1, 3 * WIDTH).reshape(3, WIDTH))


def _load(path: Path, mode: str):
    if mode == "plain":
        return rs.load(path, model=plain_template())
    if mode == "llama-template":
        from reality_stone.evaluation.loaders import tiny_llama

        return rs.load(path, model=tiny_llama(seed=3))
    return rs.load(path)


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_worker(spec_path: str) -> None:
    """Run the cases in SPEC (JSON: {"out": results.jsonl, "files": {mode: path}, "cases": [...]})
    and append one JSON line per case to ``out`` (flushed, so a crash loses only the case it hit)."""
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + ADDRESS_SPACE_HEADROOM, resource.RLIM_INFINITY))
    base = {mode: Path(p).read_bytes() for mode, p in spec["files"].items()}
    expected = {mode: _outputs(_load(Path(p), mode), mode) for mode, p in spec["files"].items()}
    work = Path(spec["out"]).with_suffix(".safetensors")
    with open(spec["out"], "a") as out:
        for case in spec["cases"]:
            mode, kind, seed = case["mode"], case["kind"], case["seed"]
            rng = random.Random(seed)
            data = mutate(base[mode], kind, rng)
            work.write_bytes(data)
            rss0, t0 = _rss(), time.perf_counter()
            outcome, detail = "defect", ""
            try:
                model = _load(work, mode)
            except (ValueError, FileNotFoundError) as exc:
                outcome, detail = "error", str(exc)[:300]
            except MemoryError:
                outcome, detail = "defect", "MemoryError (allocation bomb)"
            except Exception as exc:  # noqa: BLE001 - any other type is the defect being looked for
                outcome, detail = "defect", f"{type(exc).__name__}: {exc}"[:300] + " | " + traceback.format_exc()[-400:]
            else:
                try:
                    if kind in RESIGNED:
                        why = _consistent(model, WIDTH)
                        outcome, detail = ("defect", why) if why else ("correct", "")
                    else:
                        same = torch.equal(_outputs(model, mode), expected[mode])
                        outcome, detail = ("correct", "") if same else ("defect", "loaded with different outputs")
                except Exception as exc:  # noqa: BLE001
                    outcome, detail = "defect", f"loaded, then {type(exc).__name__}: {exc}"[:300]
                del model
            grew = _rss() - rss0
            if grew > MAX_RSS_GROWTH:
                outcome, detail = "defect", f"peak RSS grew by {grew >> 20} MiB ({detail})"
            out.write(json.dumps(dict(case, outcome=outcome, detail=detail, seconds=time.perf_counter() - t0)) + "\n")
            out.flush()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        run_worker(sys.argv[2])
    else:
        sys.exit("usage: python hostile_files.py worker SPEC.json")
