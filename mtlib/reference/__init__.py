"""The Colab bridge: trace the official MultiTalk code where it runs, translate its command
line, reproduce its noise, compare (docs/colab-bridge.md).

    tracing(out_dir, level, keep)     mtlib.reference.tracer: trace official generate() runs
    from_official(argv)               mtlib.reference.command: generate_multitalk.py args ->
                                      an mtlib run config (plain dict) + the translation notes
    noise_source(cfg, device)         mtlib.reference.noise: cpu / cuda / trace noise
    settings_diff(meta_a, meta_b)     mtlib.reference.settings: what differs between two runs

`python -m mtlib.reference --trace DIR -- generate_multitalk.py ARGS` runs the official
script in-process under the tracer and packs the trace into DIR.tar.gz.
Nothing here imports the official code until a tracer starts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["from_official", "noise_source", "settings_diff", "tracing"]


def __getattr__(name: str) -> Any:  # lazy: `import mtlib.reference` stays cheap
    if name == "tracing":
        from mtlib.reference.tracer import tracing

        return tracing
    if name == "from_official":
        from mtlib.reference.command import from_official

        return from_official
    if name == "noise_source":
        from mtlib.reference.noise import noise_source

        return noise_source
    if name == "settings_diff":
        from mtlib.reference.settings import settings_diff

        return settings_diff
    raise AttributeError(f"module 'mtlib.reference' has no attribute {name!r}")
