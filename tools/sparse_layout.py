"""The full-size MultiTalk checkpoint layout as SPARSE files, for timing `mtlib setup --verify`.

Every file has the real name, keys, shapes and dtypes (from the golden set's real-checkpoint
manifests, ../shared/golden/manifest/real_*.json) and the real size, but no data: the tensor
bytes are holes (seek past them / truncate), so 90 GB of checkpoints take a few MB of disk and
build in seconds.
- .safetensors: the JSON header as the library writes it (8-byte length, padded JSON,
  data_offsets back to back), then the file is extended to its full size.
- .pth: a torch zip archive (ZIP_STORED) whose data.pkl is the pickle torch.save writes
  (`torch._utils._rebuild_tensor_v2` over persistent storage ids, protocol 2) and whose
  `data/<i>` members have their full size and the CRC-32 of that many zero bytes; the member
  data are holes. zip64 records where the archive passes 4 GiB, as torch writes them.
The verifier reads these exactly as it reads real files: headers / the pickle and the zip
directory, never the tensor bytes (a read of a hole would allocate nothing but the tests
check st_blocks anyway).

    python tools/sparse_layout.py [--manifests DIR] [--out results.json]   # time setup --verify

Tokenizer files are empty placeholders (the verifier checks their presence only).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFESTS = ROOT.parent / "shared" / "golden" / "manifest"
ITEMSIZE = {"F32": 4, "BF16": 2, "F16": 2}
# dtype of each published file (multitalk-facts §1.1): the DiT shards and the audio adapter
# fp32, T5 bf16 (its name says so), the CLIP .pth fp16, the VAE and wav2vec2 fp32
DTYPES = {"dit": "F32", "vae": "F32", "clip": "F16", "t5": "BF16", "wav2vec2": "F32"}
WAN_SHARDS = 7


def _write_safetensors(path: Path, tensors: dict[str, tuple[tuple[int, ...], str]]) -> int:
    header: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for key, (shape, dt) in tensors.items():
        n = ITEMSIZE[dt]
        for s in shape:
            n *= s
        header[key] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes with spaces
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        f.truncate(8 + len(raw) + off)  # the tensor bytes: one hole
    return off


@cache
def _crc_zeros(n: int) -> int:
    crc, chunk = 0, bytes(1 << 24)
    while n:
        k = min(n, len(chunk))
        crc = zlib.crc32(chunk[:k] if k < len(chunk) else chunk, crc)
        n -= k
    return crc


class _Storage:
    def __init__(self, key: str, dtype: str, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _Tensor:
    """Pickles as torch.save pickles a contiguous tensor of its own storage."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        import torch

        stride, acc = [], 1
        for s in reversed(self.shape):
            stride.append(acc)
            acc *= s
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, tuple(self.shape), tuple(reversed(stride)), False,
                 collections.OrderedDict()))  # fmt: skip


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        import torch

        if isinstance(obj, _Storage):
            cls = {"F32": torch.FloatStorage, "BF16": torch.BFloat16Storage,
                   "F16": torch.HalfStorage}[obj.dtype]  # fmt: skip
            return ("storage", cls, obj.key, "cpu", obj.numel)
        return None


def _write_pth(path: Path, tensors: dict[str, tuple[tuple[int, ...], str]]) -> int:
    prefix = path.stem
    state, members = collections.OrderedDict(), []
    for i, (key, (shape, dt)) in enumerate(tensors.items()):
        numel = 1
        for s in shape:
            numel *= s
        st = _Storage(str(i), dt, numel)
        state[key] = _Tensor(st, tuple(shape))
        members.append((f"{prefix}/data/{i}", numel * ITEMSIZE[dt]))
    import io

    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(state)
    total = 0
    with open(path, "wb") as fp, zipfile.ZipFile(fp, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", buf.getvalue())
        zf.writestr(f"{prefix}/byteorder", "little")
        for name, nbytes in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = info.compress_size = nbytes
            info.CRC = _crc_zeros(nbytes)
            info.header_offset = fp.tell()
            fp.write(info.FileHeader(zip64=nbytes > 0xFFFFFFFF or fp.tell() > 0x7FFFFFFF))
            fp.seek(nbytes, os.SEEK_CUR)  # the data: a hole
            zf.filelist.append(info)
            zf.NameToInfo[name] = info
            zf.start_dir = fp.tell()
            total += nbytes
        zf.writestr(f"{prefix}/version", "3\n")
        zf._didModify = True
    return total


def _manifest(d: Path, net: str) -> dict:
    return json.loads((d / f"real_{net}.json").read_text())


def build(root: str | os.PathLike, manifests: str | os.PathLike = DEFAULT_MANIFESTS) -> dict:
    """Write the full-size sparse layout under root (Wan2.1-I2V-14B-480P/, MeiGen-MultiTalk/,
    chinese-wav2vec2-base/); returns {"files": n, "bytes": apparent size}."""
    sys.path.insert(0, str(ROOT))
    from mtlib import weights as W

    root, md = Path(root), Path(manifests)
    wan, mt, a2v = root / W.WAN_FOLDER, root / W.MULTITALK_FOLDER, root / W.WAV2VEC_FOLDER
    for d in (wan, mt, a2v, wan / W.T5_TOKENIZER_DIR):
        d.mkdir(parents=True, exist_ok=True)
    total = 0
    dit = _manifest(md, "dit")
    keys = {k: (tuple(s), DTYPES["dit"]) for k, s in dit["keys"].items()}
    base = [k for k in keys if not W.AUDIO_KEY_RE.match(k)]
    audio = [k for k in keys if W.AUDIO_KEY_RE.match(k)]
    per = -(-len(base) // WAN_SHARDS)
    wan_map, base_bytes = {}, 0
    for i in range(WAN_SHARDS):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{WAN_SHARDS:05d}.safetensors"
        part = base[i * per : (i + 1) * per]
        base_bytes += _write_safetensors(wan / name, {k: keys[k] for k in part})
        wan_map.update(dict.fromkeys(part, name))
    audio_bytes = _write_safetensors(mt / W.MULTITALK_FILE, {k: keys[k] for k in audio})
    total += base_bytes + audio_bytes
    index = {"metadata": {"total_size": base_bytes}, "weight_map": wan_map}
    (wan / W.DIT_INDEX).write_text(json.dumps(index))
    mt_map = {**wan_map, **dict.fromkeys(audio, W.MULTITALK_FILE)}
    mt_index = {"metadata": {"total_size": base_bytes + audio_bytes}, "weight_map": mt_map}
    (mt / W.DIT_INDEX).write_text(json.dumps(mt_index))
    (wan / "config.json").write_text(json.dumps(dit["config_json"]))
    for net, name in (("vae", W.VAE_FILE), ("clip", W.CLIP_FILE), ("t5", W.T5_FILE)):
        m = _manifest(md, net)
        total += _write_pth(wan / name, {k: (tuple(s), DTYPES[net]) for k, s in m["keys"].items()})
    for name in ("tokenizer_config.json", "spiece.model"):  # presence is what verify checks
        (wan / W.T5_TOKENIZER_DIR / name).write_text("{}" if name.endswith(".json") else "")
    w2v = _manifest(md, "wav2vec2")
    total += _write_safetensors(a2v / "model.safetensors", {
        k: (tuple(s), DTYPES["wav2vec2"]) for k, s in w2v["keys_for_pretraining_checkpoint"].items()})  # fmt: skip
    (a2v / "config.json").write_text(json.dumps(w2v["config"]))
    (a2v / "preprocessor_config.json").write_text(json.dumps(w2v["preprocessor"]))
    files = [p for p in root.rglob("*") if p.is_file()]
    for p in files:  # settle delayed allocation, so st_blocks is final before anyone reads
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return {
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "tensor_bytes": total,
    }


def allocated_blocks(root: str | os.PathLike) -> dict[str, int]:
    """st_blocks of every file (512-byte units actually allocated)."""
    return {str(p): p.stat().st_blocks for p in sorted(Path(root).rglob("*")) if p.is_file()}


def _time_verify(root: Path) -> tuple[float, int, str]:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mtlib", "setup", "--verify", "--root", str(root)],
                       capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    return time.perf_counter() - t, r.returncode, r.stdout + r.stderr


_IN_PROCESS = """
import sys, time
t0 = time.perf_counter(); import torch; t1 = time.perf_counter()
from mtlib import weights as W
lay = W.resolve_layout(root=sys.argv[1], check_files=False)
t2 = time.perf_counter(); r1 = W.verify_layout(lay, "multitalk-14b", strict=False)
t3 = time.perf_counter(); r2 = W.verify_layout(lay, "multitalk-14b", strict=False)
t4 = time.perf_counter()
print(round(t1 - t0, 2), round(t3 - t2, 2), round(t4 - t3, 2), r1.ok and r2.ok)
"""


def _time_in_process(root: Path) -> dict:
    """import torch, then verify_layout twice in one process (the second with every model
    module imported and the files' pages cached)."""
    r = subprocess.run([sys.executable, "-c", _IN_PROCESS, str(root)], capture_output=True,
                       text=True, cwd=ROOT, check=True)  # fmt: skip
    imp, first, second, ok = r.stdout.split()
    return {"import_torch_s": float(imp), "verify_layout_first_s": float(first),
            "verify_layout_again_s": float(second), "ok": ok == "True"}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifests", default=str(DEFAULT_MANIFESTS))
    ap.add_argument("--out", help="write the timings here (JSON)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mtlib-sparse-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        info = build(root, args.manifests)
        info["build_s"] = round(time.perf_counter() - t, 2)
        before = allocated_blocks(root)
        info["allocated_bytes"] = sum(before.values()) * 512
        runs = [_time_verify(root) for _ in range(3)]  # the first is cold (imports, page cache)
        info["cli_verify_s"] = [round(s, 2) for s, _, _ in runs]
        info["verify_rc"] = [rc for _, rc, _ in runs]
        info["in_process"] = _time_in_process(root)
        after = allocated_blocks(root)
        info["blocks_unchanged"] = after == before
        info["blocks_changed"] = {
            Path(k).name: [before[k], after[k]] for k in before if after[k] != before[k]
        }
        info["verify_output"] = runs[-1][2].splitlines()
    info["machine"] = f"{os.cpu_count()} CPU cores (shared), python {sys.version.split()[0]}"
    print(json.dumps(info, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(info, indent=1) + "\n")
    return 0 if all(rc == 0 for rc in info["verify_rc"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
