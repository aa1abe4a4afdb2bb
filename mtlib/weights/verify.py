"""Verification of a `WeightsLayout` from headers only: every key, shape and dtype against the
expected maps, file sizes against what the headers promise, the wrong model named
(`verify_layout` -> `VerifyReport`).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mtlib.weights.expected import OPTIONAL_KEYS, ExpectedMap, _legacy_weight_norm, expected_map
from mtlib.weights.files import (
    AUDIO_KEY_RE,
    CLIP_TOKENIZER_DIR,
    DIT_INDEX,
    FIX_DOWNLOAD,
    GB,
    MULTITALK_FILE,
    STAND_IN_TOKENIZER_MARKER,
    T5_TOKENIZER_DIR,
    VAE_FILE,
    WAN_FOLDER,
    WAN_REPO,
    WAV2VEC_FILES,
    WAV2VEC_FOLDER,
    WAV2VEC_REPO,
    Problem,
    WeightsError,
)
from mtlib.weights.headers import FLOAT_DTYPES, FileHeader, TensorInfo, read_header
from mtlib.weights.layout import (
    RequiredFile,
    WeightsLayout,
    _missing_problem,
    _tokenizer_ok,
    fix_command,
)

# ------------------------------------------------------------------------------------------
# Verification


@dataclass
class ReportRow:
    file: str
    status: str  # ok | missing | error | warn | absent (optional)
    detail: str


@dataclass
class VerifyReport:
    layout: WeightsLayout
    config_name: str
    rows: list[ReportRow] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, file: str, status: str, detail: str) -> None:
        self.rows.append(ReportRow(file, status, detail))

    def fail(self, problem: Problem, file: str | None = None, status: str = "error") -> None:
        fix = fix_command(self.layout)
        if fix != FIX_DOWNLOAD:  # name the folder the user actually has
            problem = Problem(
                problem.kind, problem.file, problem.message.replace(f"`{FIX_DOWNLOAD}`", f"`{fix}`")
            )
        self.problems.append(problem)
        self.add(file or problem.file, status, problem.message)

    def table(self, width: int = 100) -> str:
        """Plain-text table, one row per file: status, file (relative to its folder), detail."""
        lines = [f"checkpoints ({self.config_name}, {self.layout.source}):",
                 f"  wan_dir       {self.layout.wan_dir}",
                 f"  multitalk_dir {self.layout.multitalk_dir}" + ("  (linked into wan_dir)" if self.layout.linked else ""),
                 f"  wav2vec_dir   {self.layout.wav2vec_dir}", ""]  # fmt: skip
        roots = sorted({str(self.layout.wan_dir), str(self.layout.multitalk_dir), str(self.layout.wav2vec_dir)},
                       key=len, reverse=True)  # fmt: skip
        names = []
        for r in self.rows:
            name = r.file
            for base in roots:
                if name.startswith(base + os.sep):
                    name = Path(base).name + "/" + name[len(base) + 1 :]
                    break
            names.append(name)
        w = min(max((len(n) for n in names), default=4), 70)
        lines.append(f"{'status':<8} {'file':<{w}}  detail")
        for r, n in zip(self.rows, names, strict=True):
            detail = r.detail if len(r.detail) <= width else r.detail[: width - 3] + "..."
            lines.append(f"{r.status:<8} {n:<{w}}  {detail}")
        lines.append("")
        if self.ok:
            lines.append(
                "ready: every checkpoint file is present, complete and of the right model."
            )
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p.message}" for p in self.problems]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"ok": self.ok, "config": self.config_name, "layout": self.layout.to_dict(),
                "rows": [r.__dict__ for r in self.rows],
                "problems": [p.__dict__ for p in self.problems]}  # fmt: skip

    def raise_first(self) -> None:
        if self.problems:
            more = len(self.problems) - 1
            tail = (
                f"\n(and {more} more problem(s); `mtlib setup --verify` prints them all)"
                if more
                else ""
            )
            raise WeightsError(self.problems[0].message + tail, list(self.problems))


def _shape_str(s) -> str:
    return "[" + ", ".join(str(x) for x in s) + "]"


def _fmt_bytes(n: int) -> str:
    return f"{n / GB:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} B"


def _fmt_count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else str(n)


def compare_state(
    actual: dict[str, TensorInfo],
    expected: ExpectedMap,
    what: str,
    file: str,
    optional: Iterable[str] = (),
    limit: int = 4,
) -> list[Problem]:
    """Missing / unexpected keys, wrong shapes and wrong dtypes, each its own Problem."""
    optional = tuple(optional)

    def is_optional(k: str) -> bool:
        return any(fnmatch.fnmatchcase(k, p) for p in optional)

    problems = []
    missing = [k for k in expected if k not in actual and not is_optional(k)]
    unexpected = [k for k in actual if k not in expected and not is_optional(k)]
    if missing:
        problems.append(Problem("keys", file, (
            f"{what}: {len(missing)} expected key(s) missing, e.g. {', '.join(missing[:limit])}. "
            "The file is from another model or release. Fix: re-download it with "
            f"`{FIX_DOWNLOAD}`.")))  # fmt: skip
    if unexpected:
        problems.append(Problem("keys", file, (
            f"{what}: {len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:limit])}. "
            "The file is from another model or release. Fix: re-download it with "
            f"`{FIX_DOWNLOAD}`.")))  # fmt: skip
    wrong = [(k, expected[k][0], actual[k].shape) for k in expected
             if k in actual and tuple(expected[k][0]) != tuple(actual[k].shape)]  # fmt: skip
    if wrong:
        shown = "; ".join(
            f"{k}: expected {_shape_str(e)}, found {_shape_str(a)}" for k, e, a in wrong[:limit]
        )
        problems.append(Problem("shape", file, (
            f"{what}: {len(wrong)} tensor(s) with the wrong shape: {shown}. The file is from a "
            f"model of another size. Fix: re-download it with `{FIX_DOWNLOAD}`.")))  # fmt: skip
    bad_dtype = [(k, expected[k][1], actual[k].dtype) for k in expected
                 if k in actual and expected[k][1] and expected[k][1] != actual[k].dtype]  # fmt: skip
    non_float = [(k, a) for k, a in ((k, t.dtype) for k, t in actual.items()) if a not in FLOAT_DTYPES
                 and k in expected]  # fmt: skip
    if non_float:
        problems.append(Problem("dtype", file, (
            f"{what}: {len(non_float)} tensor(s) are not floating point (e.g. {non_float[0][0]}: "
            f"{non_float[0][1]}); a quantised checkpoint? mtlib loads the published float "
            f"weights. Fix: re-download with `{FIX_DOWNLOAD}`.")))  # fmt: skip
    elif bad_dtype:
        k, e, a = bad_dtype[0]
        problems.append(Problem("dtype", file, (
            f"{what}: {len(bad_dtype)} tensor(s) stored as {a}, expected {e} (e.g. {k}). "
            f"Fix: re-download it with `{FIX_DOWNLOAD}`.")))  # fmt: skip
    return problems


def _count_layers(keys: Iterable[str], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in keys if (m := pat.match(k))})


def _dit_wrong_model(
    actual: dict[str, TensorInfo], expected: ExpectedMap, cfg: dict | None
) -> str | None:
    pe = actual.get("patch_embedding.weight")
    exp_pe = expected.get("patch_embedding.weight")
    model_type = (cfg or {}).get("model_type")
    if (
        pe is not None and exp_pe is not None and pe.shape[1:2] == (16,) and exp_pe[0][1] == 36
    ) or (model_type == "t2v"):
        return (f"this is Wan2.1-T2V (text-to-video: patch_embedding.weight takes 16 input channels, "
                f"I2V takes 36 = noise 16 + mask 4 + image latent 16); MultiTalk needs "
                f"{WAN_REPO}. Fix: `{FIX_DOWNLOAD}` and point wan_dir at {WAN_FOLDER}.")  # fmt: skip
    if pe is not None and exp_pe is not None and pe.shape[1] == 48 and exp_pe[0][1] == 36:
        return (f"this is a Wan2.2 DiT (patch_embedding.weight takes 48 input channels); MultiTalk "
                f"needs {WAN_REPO} (36). Fix: `{FIX_DOWNLOAD}`.")  # fmt: skip
    if pe is not None and exp_pe is not None and pe.shape[0] != exp_pe[0][0]:
        size = {1536: "Wan2.1 1.3B", 5120: "Wan2.1 14B", 3072: "Wan2.2 5B"}.get(
            pe.shape[0], "another size"
        )
        return (f"the DiT is {pe.shape[0]} wide ({size}); this configuration needs {exp_pe[0][0]} "
                f"({'the tiny test model' if exp_pe[0][0] < 1000 else WAN_REPO}). "
                f"Fix: point wan_dir at the right checkpoint or pick the matching model config.")  # fmt: skip
    return None


def _vae_wrong_model(actual: dict[str, TensorInfo], expected: ExpectedMap) -> str | None:
    c1 = actual.get("conv1.weight")
    exp = expected.get("conv1.weight")
    enc = actual.get("encoder.conv1.weight")
    if (c1 is not None and exp is not None and c1.shape[0] == 96 and exp[0][0] == 32) or (
        enc is not None and len(enc.shape) > 1 and enc.shape[1] == 12
    ):
        return (f"this is the Wan2.2 VAE (48 latent channels, 16x spatial compression); MultiTalk "
                f"needs {VAE_FILE} (16 latent channels) from {WAN_REPO}. Fix: `{FIX_DOWNLOAD}`.")  # fmt: skip
    return None


def _wav2vec_geometry(keys: dict, prefix: str = "wav2vec2.") -> tuple[int, int | None]:
    layers = _count_layers(keys, prefix + "encoder.layers.")
    ln = keys.get(prefix + "encoder.layer_norm.weight")
    width = None
    if ln is not None:
        width = (ln.shape if isinstance(ln, TensorInfo) else ln[0])[0]
    return layers, width


def _wav2vec_name(layers, width) -> str:
    if (layers, width) == (24, 1024):
        return "wav2vec2-large (24 layers x 1024 wide)"
    if (layers, width) == (12, 768):
        return "a wav2vec2-base model (12 layers x 768 wide)"
    return f"a wav2vec2 of {layers} layers x {width} wide"


class _Verifier:
    def __init__(
        self, layout: WeightsLayout, config_name: str, expected: dict[str, ExpectedMap] | None
    ):
        self.layout = layout
        self.config_name = config_name
        self._expected = dict(expected or {})
        self.report = VerifyReport(layout, config_name)

    def expected(self, net: str) -> ExpectedMap:
        if net not in self._expected:
            self._expected[net] = expected_map(net, self.config_name)
        return self._expected[net]

    def header(self, path: Path, what: str) -> FileHeader | None:
        """Header of one file, with its own report row; None when missing or unreadable."""
        if not path.exists():
            self.report.fail(_missing_problem(RequiredFile("", path, what)), str(path), "missing")
            return None
        h = read_header(path)
        if h.problem is not None:
            self.report.fail(h.problem, str(path))
            return None
        if not h.tensors and path.suffix == ".bin":
            self.report.add(
                str(path), "warn", f"{what}: legacy (pre-zip) torch format; keys not checked"
            )
            return None
        self.report.add(str(path), "ok", f"{what}: {len(h.tensors)} tensors, {_fmt_bytes(h.file_bytes)}, "
                        f"{'/'.join(h.dtypes) or '-'}")  # fmt: skip
        return h

    def run(self) -> VerifyReport:
        self.check_dit()
        self.check_single("vae", self.layout.vae_file, "VAE", _vae_wrong_model)
        self.check_single("t5", self.layout.t5_file, "T5 encoder")
        self.check_tokenizer()
        self.check_single("clip", self.layout.clip_file, "CLIP")
        d = self.layout.wan_dir / CLIP_TOKENIZER_DIR
        self.report.add(str(d), "ok" if d.is_dir() else "absent",
                        "XLM-R tokenizer: optional (only the official CLIP wrapper's __init__ needs it)")  # fmt: skip
        self.check_wav2vec()
        return self.report

    # ---- DiT: Wan shards + multitalk.safetensors, through the indexes
    def check_dit(self) -> None:
        lay = self.layout
        cfg = self.check_dit_config()
        index_map: dict[str, str] = {}
        idx_files = [(lay.wan_index, "Wan shard index")]
        mt_index = lay.wan_dir / DIT_INDEX if lay.linked else lay.multitalk_index
        if mt_index != lay.wan_index:
            idx_files.append((mt_index, "MultiTalk shard index"))
        for idx, what in idx_files:
            if not idx.exists():
                self.report.fail(_missing_problem(RequiredFile("", idx, what)), str(idx), "missing")
                continue
            try:
                wm = json.loads(idx.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                self.report.fail(Problem("corrupt", str(idx), f"{idx}: not a shard index json ({e}). "
                                         f"Fix: re-download it with `{FIX_DOWNLOAD}`."))  # fmt: skip
                continue
            index_map.update(wm)
            self.report.add(
                str(idx), "ok", f"{what}: {len(wm)} keys -> {len(set(wm.values()))} files"
            )
        actual: dict[str, TensorInfo] = {}
        where: dict[str, str] = {}
        complete = True
        for path in lay.dit_files():
            what = "audio adapter" if path.name == MULTITALK_FILE else "DiT base shard"
            h = self.header(path, what)
            if h is None:
                complete = False
                continue
            for k, t in h.tensors.items():
                actual[k] = t
                where[k] = path.name
        if not complete:
            return
        exp = self.expected("dit")
        file = str(lay.wan_dir)
        wrong = _dit_wrong_model(actual, exp, cfg)
        if wrong:
            self.report.fail(
                Problem("wrong_model", file, f"DiT in {lay.wan_dir}: {wrong}"), "DiT (all shards)"
            )
            return
        audio_in_base = sorted(
            k for k, f in where.items() if AUDIO_KEY_RE.match(k) and f != MULTITALK_FILE
        )
        problems = compare_state(actual, exp, "DiT (Wan shards + multitalk.safetensors)", file)
        for k, f in index_map.items():
            if k in where and where[k] != f:
                problems.append(Problem("index", f, (
                    f"shard index says {k!r} is in {f}, but it is in {where[k]}. Fix: re-download the "
                    f"index json with `{FIX_DOWNLOAD}`.")))  # fmt: skip
                break
        if audio_in_base:
            self.report.add("DiT (all shards)", "warn",
                            f"{len(audio_in_base)} audio-adapter keys found in the base shards (multitalk.safetensors wins)")  # fmt: skip
        for p in problems:
            self.report.fail(p, "DiT (all shards)")
        if not problems:
            n = sum(t.numel for t in actual.values())
            self.report.add("DiT (all shards)", "ok",
                            f"{len(actual)} keys = expected, {_fmt_count(n)} params, shapes match")  # fmt: skip

    def check_dit_config(self) -> dict | None:
        path = self.layout.dit_config
        if not path.exists():
            self.report.fail(
                _missing_problem(RequiredFile("", path, "DiT config")), str(path), "missing"
            )
            return None
        try:
            cfg = json.loads(path.read_text())
        except ValueError as e:
            self.report.fail(Problem("corrupt", str(path), f"{path}: not valid JSON ({e})."))
            return None
        exp = self.expected("dit")
        problems = []
        if cfg.get("model_type") not in (None, "i2v"):
            return cfg  # reported as a wrong model with the weights
        pe = exp.get("patch_embedding.weight")
        if pe is not None:
            for key, want in (("dim", pe[0][0]), ("in_dim", pe[0][1])):
                if key in cfg and cfg[key] != want:
                    problems.append(f"{key} {cfg[key]} (expected {want})")
        layers = _count_layers(exp, "blocks.")
        if "num_layers" in cfg and layers and cfg["num_layers"] != layers:
            problems.append(f"num_layers {cfg['num_layers']} (expected {layers})")
        if problems:
            self.report.fail(Problem("config", str(path), (
                f"{path}: {', '.join(problems)}: this config.json is not the {self.config_name} DiT's. "
                f"Fix: re-download it with `{FIX_DOWNLOAD}`.")))  # fmt: skip
        else:
            self.report.add(str(path), "ok", f"DiT config: model_type {cfg.get('model_type')}, "
                            f"dim {cfg.get('dim')}, {cfg.get('num_layers')} layers")  # fmt: skip
        return cfg

    def check_single(self, net: str, path: Path, what: str, wrong_model=None) -> None:
        h = self.header(path, what)
        if h is None:
            return
        exp = self.expected(net)
        if wrong_model is not None:
            msg = wrong_model(h.tensors, exp)
            if msg:
                self.report.fail(Problem("wrong_model", str(path), f"{path}: {msg}"))
                return
        for p in compare_state(
            h.tensors, exp, f"{what} ({path.name})", str(path), OPTIONAL_KEYS.get(net, ())
        ):
            self.report.fail(p)

    def check_tokenizer(self) -> None:
        d = self.layout.wan_dir / T5_TOKENIZER_DIR
        if (d / STAND_IN_TOKENIZER_MARKER).exists():
            self.report.add(
                str(d), "ok", "umT5 tokenizer: stand-in marker (tiny random weights only)"
            )
        elif _tokenizer_ok(d):
            self.report.add(str(d), "ok", "umT5 tokenizer files present")
        else:
            self.report.fail(_missing_problem(RequiredFile("", d, "umT5 tokenizer (tokenizer_config.json + "
                                                           "spiece.model or tokenizer.json)")), str(d), "missing")  # fmt: skip

    def check_wav2vec(self) -> None:
        lay = self.layout
        exp = self.expected("wav2vec2")
        exp_layers, exp_width = _wav2vec_geometry(exp)
        for name in WAV2VEC_FILES:
            p = lay.wav2vec_dir / name
            if not p.exists():
                self.report.fail(
                    _missing_problem(RequiredFile("", p, f"wav2vec2 {name}")), str(p), "missing"
                )
        cfg_path = lay.wav2vec_dir / "config.json"
        if cfg_path.exists():
            try:
                cfg = json.loads(cfg_path.read_text())
            except ValueError as e:
                self.report.fail(
                    Problem("corrupt", str(cfg_path), f"{cfg_path}: not valid JSON ({e}).")
                )
                cfg = None
            if cfg is not None:
                layers, width = cfg.get("num_hidden_layers"), cfg.get("hidden_size")
                if cfg.get("model_type", "wav2vec2") != "wav2vec2":
                    self.report.fail(Problem("wrong_model", str(cfg_path), (
                        f"{cfg_path}: model_type {cfg.get('model_type')!r}; MultiTalk needs "
                        f"{WAV2VEC_REPO} (wav2vec2). Fix: `{FIX_DOWNLOAD}`.")))  # fmt: skip
                elif (layers, width) != (exp_layers, exp_width):
                    self.report.fail(Problem("wrong_model", str(cfg_path), (
                        f"{cfg_path}: this is {_wav2vec_name(layers, width)}; this configuration needs "
                        f"{exp_layers} layers x {exp_width} wide"
                        + (f" ({WAV2VEC_REPO})" if exp_width == 768 else " (the tiny test model)")
                        + f". Fix: point wav2vec_dir at {WAV2VEC_FOLDER} (`{FIX_DOWNLOAD}`).")))  # fmt: skip
                else:
                    self.report.add(
                        str(cfg_path), "ok", f"wav2vec2 config: {layers} layers x {width}"
                    )
        h = self.header(lay.wav2vec_weights, "wav2vec2 weights")
        if h is None:
            return
        tensors = {_legacy_weight_norm(k): t for k, t in h.tensors.items()}
        if not any(k.startswith("wav2vec2.") for k in tensors):  # a bare Wav2Vec2Model dump
            tensors = {f"wav2vec2.{k}": t for k, t in tensors.items()}
        layers, width = _wav2vec_geometry(tensors)
        if (layers, width) != (exp_layers, exp_width):
            self.report.fail(Problem("wrong_model", str(h.path), (
                f"{h.path}: this is {_wav2vec_name(layers, width)}; this configuration needs "
                f"{exp_layers} layers x {exp_width} wide. Fix: point wav2vec_dir at {WAV2VEC_FOLDER} "
                f"(`{FIX_DOWNLOAD}`).")))  # fmt: skip
            return
        for p in compare_state(
            tensors, exp, f"wav2vec2 ({h.path.name})", str(h.path), OPTIONAL_KEYS["wav2vec2"]
        ):
            self.report.fail(p)


def verify_layout(
    layout: WeightsLayout,
    config_name: str = "multitalk-14b",
    *,
    expected: dict[str, ExpectedMap] | None = None,
    strict: bool = True,
) -> VerifyReport:
    """Check every file of `layout` against the expected state of `config_name`'s networks.

    Reads headers only (never tensor data) and writes nothing. strict: raise WeightsError
    with the first problem (all of them in `.problems`); else return the report.
    expected: per-network maps overriding EXPECTED (tests; or a caller that has models).
    """
    report = _Verifier(layout, config_name, expected).run()
    if strict:
        report.raise_first()
    return report
