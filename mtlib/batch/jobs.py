"""The jobs of a batch: a YAML list or a CSV with the same columns, read into `Job`s.

    - id: alice                       # letters, digits, '-', '_', '.': the output folder <out>/<id>/
      image: s3://bucket/in/alice.png # local path, https:// or s3:// URL
      audio: s3://bucket/in/alice.wav # one URL, or a list of two (two speakers)
      prompt: A woman talking.
      bbox: [[0, 0, 100, 100]]        # optional, per person [row_min, col_min, row_max, col_max]
      audio_type: para                # optional, two speakers: para | add
      overrides: {generation.seed: 3} # optional, config keys like `-p`

CSV: the same column names; `audio` holds one URL or two separated by ';', `bbox` and
`overrides` hold YAML (`{generation.seed: 3}`; `generation.seed=3; generation.shift=5` works too).

Problems of the FILE (unreadable, not a list, a job without a usable or with a duplicate id)
refuse the whole batch before anything runs: there is nowhere to record them. Problems of ONE job
(a missing image, an unknown config key) fail that job only, recorded under its id.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from mtlib.config import ConfigError, RunConfig

FIELDS = ("id", "image", "audio", "prompt", "bbox", "audio_type", "overrides")
ID_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class JobsFileError(ValueError):
    """The jobs file itself is refused (no job runs): names the file, the rule and the fix."""


@dataclass(frozen=True)
class Job:
    id: str
    image: str | None
    audio: tuple[str, ...]
    prompt: str | None = None
    bbox: Any = None
    audio_type: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why this job cannot run (recorded as its failure)

    def inputs(self) -> dict[str, str]:
        """{name: URL} of the input files: image, audio1[, audio2]."""
        out = {"image": self.image} if self.image else {}
        out.update({f"audio{i + 1}": a for i, a in enumerate(self.audio)})
        return out

    def config(self, base: RunConfig, inputs: dict[str, str] | None = None) -> RunConfig:
        """The job's RunConfig: `base`, then the job's inputs, then its overrides.
        `inputs` replaces the URLs (e.g. by staged local copies). ConfigError if refused."""
        urls = dict(self.inputs(), **(inputs or {}))
        over: dict[str, Any] = {
            "name": self.id,
            "inputs.image": urls["image"],
            "inputs.audio": [urls[k] for k in sorted(urls) if k.startswith("audio")],
        }
        if self.prompt is not None:
            over["inputs.prompt"] = self.prompt
        if self.bbox is not None:
            over["inputs.bbox"] = self.bbox
        if self.audio_type is not None:
            over["inputs.audio_type"] = self.audio_type
        for key in self.overrides:
            if key.split(".")[0] == "inputs" and key.split(".")[-1] in ("image", "audio"):
                raise ConfigError(
                    f"overrides: {key!r} is a job field: set `{key.split('.')[-1]}` instead."
                )
        over.update(self.overrides)
        try:
            return base.replace(**over)
        except ConfigError as e:
            raise ConfigError(f"job {self.id!r}: {e}") from None


def _parse_overrides(value: Any, where: str) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        text = value.strip()
        if "=" in text and not text.startswith("{"):  # key=value; key=value (CSV, like -p)
            items = [s for s in re.split(r"[;\n]", text) if s.strip()]
            out = {}
            for item in items:
                if "=" not in item:
                    raise ValueError(f"{where}: {item.strip()!r} is not key.path=value")
                k, v = item.split("=", 1)
                out[k.strip()] = yaml.safe_load(v)
            return out
        value = yaml.safe_load(text)
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{where}: expected a mapping {{key.path: value}}, got {value!r}")
    return dict(value)


def _job(raw: Any, n: int, source: str) -> Job:
    where = f"{source}: job {n}"
    if not isinstance(raw, dict):
        raise JobsFileError(
            f"{where}: expected a mapping with id, image, audio, prompt, got {raw!r}."
        )
    jid = raw.get("id")
    jid = None if jid is None else str(jid).strip()
    if not jid or not ID_RULE.match(jid):
        raise JobsFileError(
            f"{where}: id {raw.get('id')!r} is missing or unusable as a folder name. Fix: an id "
            "of letters, digits, '-', '_' or '.' (at most 128), unique in the file."
        )
    problems = []
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        problems.append(f"unknown field(s) {unknown}; allowed: {', '.join(FIELDS)}")
    image = raw.get("image") or None
    if not image:
        problems.append("no `image` (a local path or URL)")
    audio = raw.get("audio")
    if isinstance(audio, str):
        audio = [a.strip() for a in audio.split(";") if a.strip()]
    if not isinstance(audio, list) or not 1 <= len(audio) <= 2 or not all(audio):
        problems.append(f"`audio` must be one URL or a list of two, got {raw.get('audio')!r}")
        audio = []
    bbox = raw.get("bbox")
    if isinstance(bbox, str):
        bbox = yaml.safe_load(bbox) if bbox.strip() else None
    try:
        overrides = _parse_overrides(raw.get("overrides"), "overrides")
    except (ValueError, yaml.YAMLError) as e:
        problems.append(str(e))
        overrides = {}
    prompt = raw.get("prompt")
    return Job(
        id=jid,
        image=str(image) if image else None,
        audio=tuple(str(a) for a in audio),
        prompt=None if prompt in (None, "") else str(prompt),
        bbox=bbox,
        audio_type=raw.get("audio_type") or None,
        overrides=overrides,
        problem="; ".join(problems) or None,
    )


def parse_jobs(text: str, source: str = "jobs") -> list[Job]:
    """Jobs from the text of a YAML list or a CSV (chosen by the source's suffix, else sniffed)."""
    is_csv = source.lower().endswith(".csv") or (
        not source.lower().endswith((".yaml", ".yml")) and text.lstrip().lower().startswith("id,")
    )
    if is_csv:
        rows = list(csv.DictReader(io.StringIO(text)))
        raw = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in rows]
        raw = [{k: v for k, v in r.items() if v != ""} for r in raw]
    else:
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise JobsFileError(f"{source}: not valid YAML ({e}).") from None
        if isinstance(raw, dict) and isinstance(raw.get("jobs"), list):
            raw = raw["jobs"]
    if not isinstance(raw, list) or not raw:
        raise JobsFileError(
            f"{source}: expected a non-empty list of jobs (YAML list or CSV with the columns "
            f"{', '.join(FIELDS)})."
        )
    jobs = [_job(r, n, source) for n, r in enumerate(raw, 1)]
    seen: set[str] = set()
    for j in jobs:
        if j.id in seen:
            raise JobsFileError(
                f"{source}: the id {j.id!r} is used twice. Fix: ids must be unique."
            )
        seen.add(j.id)
    return jobs


def load_jobs(url: str) -> list[Job]:
    """Read and parse the jobs file at a local path or URL."""
    from mtlib.batch.storage import read_bytes

    data = read_bytes(url, what="jobs file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise JobsFileError(f"{url}: not UTF-8 text (a YAML list or a CSV).") from None
    return parse_jobs(text, str(url))
