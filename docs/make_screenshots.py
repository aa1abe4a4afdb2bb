"""Screenshots of the four interactive views (mtlib.inspect.widgets) in a real JupyterLab + Chromium.

    python docs/make_screenshots.py            # writes docs/screenshots/0{1,2,3,4}_*.png

What it does, all on 127.0.0.1 and in a fresh temporary directory:
  1. makes the demo inputs: a short SYNTHETIC run directory for view 03 (video.mp4 drawn
     from data/portrait.png, swaying with the loudness of data/speech_1p79s.wav, with the
     speech as its soundtrack, and a full trace of made-up per-step latents that go from
     seeded noise to the frames' pixels), and the two demo traces of mtlib.compare for 04;
  2. writes one small notebook per view (the same one-cell calls the project notebooks use);
  3. starts JupyterLab (token auth, no browser, no update/news checks, workspaces in the temp
     dir) and drives headless Chromium through Playwright: open the notebook, run all cells
     (JupyterLab's own command, so the widgets talk to a live kernel), wait for the widgets,
     set one control where the view is more telling after a change, screenshot, stop;
  4. keeps each PNG under 300 KB (palette quantisation when needed).

Needs: jupyterlab (the `lab` extra), playwright (pip; only its driver is used) and a
Chromium binary (Debian: `apt-get install chromium`; override with $CHROMIUM).
The widgets decide they are interactive by the rule of mtlib.inspect.widgets.is_interactive: this
script sets nothing, JupyterLab's execute requests offer stdin, so the views build widgets.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROME_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
MAX_BYTES = 300_000


def demo_run(base: Path) -> Path:
    """A small synthetic run directory: video.mp4 (+ speech) and trace/ with full latents."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from mtlib import trace
    from mtlib.media.audio import load_audio
    from mtlib.media.image import prepare_image
    from mtlib.media.video import write_mp4

    run = base / "runs" / "demo-synthetic"
    run.mkdir(parents=True)
    crop = prepare_image(str(ROOT / "data/portrait.png"), "multitalk-480", "official").crop_u8  # [832, 448, 3]
    crop = crop[::4, ::4]  # [208, 112, 3]
    speech = load_audio(str(ROOT / "data/speech_1p79s.wav"))
    n = 45
    hop = len(speech) // n
    env = np.array([np.abs(speech[i * hop:(i + 1) * hop]).mean() for i in range(n)])
    env = env / max(env.max(), 1e-6)
    frames = []
    for i in range(n):
        shift = int(round(6 * env[i]))
        f = np.roll(crop, shift, axis=0).astype(np.float32)
        f *= 0.85 + 0.15 * env[i]
        frames.append(np.clip(f, 0, 255).astype(np.uint8))
    write_mp4(np.stack(frames), run / "video.mp4", audio=(speech, 16000),
              metadata={"demo": "synthetic frames for the widget screenshots"})
    # latents: [1, 16, T, h, w], from seeded noise (step 0) to the frames' pixels (last step)
    gen = torch.Generator().manual_seed(0)
    T = (n - 1) // 4 + 1
    target = torch.from_numpy(np.stack(frames[::4])[:, ::8, ::8].mean(-1) / 127.5 - 1)  # [T, 26, 14]
    target = target[None, None].repeat(1, 16, 1, 1, 1).float()
    noise = torch.randn(target.shape, generator=gen)
    steps = 4
    with trace.TraceWriter(run / "trace", level="full", meta={"demo": "synthetic"}) as tw, trace.recording(tw):
        with trace.scope("e2e"), trace.scope("clip0"):
            for s in range(steps):
                w = s / (steps - 1)
                with trace.scope(f"step{s}"):
                    trace.point("latent_in", (1 - w) * noise + w * target)
    assert T == target.shape[2]
    return run


NOTEBOOKS = {
    "01_preprocessing": [
        "from mtlib.inspect import widgets",
        "# real wav2vec2 weights are not available here: a TINY RANDOM wav2vec2 (mtlib.weights.tiny)\n"
        "from mtlib.weights.tiny import write_tiny_checkpoints\n"
        "from mtlib.models.wav2vec import TINY_GEOMETRY, load_wav2vec\n"
        "encoder = load_wav2vec(write_tiny_checkpoints({tiny!r}).wav2vec_dir, TINY_GEOMETRY)",
        'widgets.preprocessing_view("data/two_person_16x9.png", ["data/speech_1p79s.wav", "data/speech_b_1p79s.wav"],\n'
        '                           buckets="tiny", audio_encoder=encoder)',
    ],
    "02_shape_inspection": [
        "from mtlib.inspect import widgets",
        'widgets.plan_view("tiny", image_size="data/portrait.png", audio_seconds=1.79, frame_num=43)',
    ],
    "03_inference": [
        "from mtlib.inspect import widgets",
        "widgets.video_view({run!r}, frame=20, step=2)",
    ],
    "04_compare": [
        "from mtlib.inspect import widgets",
        "widgets.compare_view({a!r}, {b!r})",
    ],
}


def write_notebook(path: Path, cells: list[str]) -> None:
    setup = f"import os\nos.chdir({str(ROOT)!r})\n%matplotlib inline"
    nb = {
        "cells": [{"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None}
                  for src in [setup, *cells]],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(root: Path, port: int, token: str) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True", f"--LabApp.workspaces_dir={root / '.ws'}",
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        f"--LabApp.user_settings_dir={root / '.settings'}", "--LabApp.extension_manager=readonly",
        "--ServerApp.allow_root=True",  # containers run as root; the server listens on 127.0.0.1 only
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JUPYTER_RUNTIME_DIR=str(root / ".runtime"))
    for var in ("MTLIB_HEADLESS", "PAPERMILL_EXECUTION", "MTLIB_INTERACTIVE"):
        env.pop(var, None)
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    import urllib.request

    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"JupyterLab did not start; see {root / 'lab.log'}")


def shrink(png: Path) -> None:
    """Trim the empty page below the notebook, then quantise until it fits MAX_BYTES."""
    from PIL import Image, ImageChops

    im = Image.open(png).convert("RGB")
    box = ImageChops.difference(im, Image.new("RGB", im.size, (255, 255, 255))).getbbox()
    if box:
        im.crop((0, 0, im.size[0], min(im.size[1], box[3] + 16))).save(png, optimize=True)
    if png.stat().st_size <= MAX_BYTES:
        return
    im = Image.open(png).convert("RGB")
    for colors in (256, 128, 64):
        im.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)
        if png.stat().st_size <= MAX_BYTES:
            return
    w, h = im.size
    im.resize((w * 3 // 4, h * 3 // 4), Image.LANCZOS).quantize(colors=128).save(png, optimize=True)


def shoot(page, port: int, token: str, name: str, after=None) -> Path:
    page.goto(f"http://127.0.0.1:{port}/lab/tree/{name}.ipynb?reset&token={token}")  # reset: no old tabs
    page.wait_for_function("window.jupyterapp && document.querySelector('.jp-NotebookPanel')", timeout=120_000)
    # kernel ready: the toolbar's status shows idle
    page.wait_for_function(
        "(() => { const w = window.jupyterapp.shell.currentWidget;"
        " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
        " return !!k && k.status === 'idle'; })()", timeout=120_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_selector(".jp-OutputArea .widget-vbox", state="attached", timeout=180_000)
    page.wait_for_function(
        "(() => { const w = window.jupyterapp.shell.currentWidget;"
        " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
        " return !!k && k.status === 'idle'"
        " && [...document.querySelectorAll('.jp-Cell .jp-InputPrompt')].every(p => !p.textContent.includes('*')); })()",
        timeout=300_000)
    if after is not None:
        after(page)
    time.sleep(2.0)  # images decode, layout settles
    page.evaluate("window.jupyterapp.commands.execute('application:toggle-left-area')") if page.is_visible(
        ".jp-SideBar.jp-mod-left .lm-mod-current") else None
    page.evaluate("document.querySelectorAll('.jp-Cell')[0].style.display = 'none'")  # the chdir cell
    page.add_style_tag(content=".Toastify { display: none !important; }")  # JupyterLab's news toast
    time.sleep(0.5)
    panel = page.locator(".jp-NotebookPanel-notebook").first
    target = OUT / f"{name}.png"
    panel.screenshot(path=str(target))
    shrink(target)
    return target


def set_slider(page, label: str, value: str) -> None:
    """Type a value into an ipywidgets slider's readout (as a person would) and wait."""
    box = page.locator(".widget-slider", has=page.locator(f"label:text-is('{label}')")).first
    readout = box.locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Enter")
    time.sleep(3.0)


def main() -> int:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="mtlib-shots-"))
    try:
        run = demo_run(base)
        from mtlib.inspect.compare import demo_traces

        a, b = demo_traces(base / "compare")
        fmt = {"run": str(run), "a": str(a), "b": str(b), "tiny": str(base / "tiny-weights")}
        for name, cells in NOTEBOOKS.items():
            write_notebook(base / f"{name}.ipynb", [c.format(**fmt) if "{" in c and "!r}" in c else c for c in cells])
        port, token = free_port(), secrets.token_hex(16)
        lab = start_lab(base, port, token)
        try:
            with sync_playwright() as pw:
                # Playwright adds --headless itself and takes the profile dir as an argument
                browser = pw.chromium.launch_persistent_context(
                    str(base / ".chromium"), executable_path=CHROMIUM, headless=True,
                    args=CHROME_FLAGS[1:], viewport={"width": 1200, "height": 2600},
                )
                page = browser.new_page()
                shots = [
                    shoot(page, port, token, "01_preprocessing"),
                    shoot(page, port, token, "02_shape_inspection"),
                    shoot(page, port, token, "03_inference", after=lambda p: set_slider(p, "video frame", "30")),
                    shoot(page, port, token, "04_compare"),
                ]
                browser.close()
        finally:
            lab.terminate()
            lab.wait(timeout=30)
        for s in shots:
            print(f"{s.relative_to(ROOT)}  {s.stat().st_size // 1000} KB")
    finally:
        if os.environ.get("MTLIB_KEEP_SHOTS_DIR"):
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
