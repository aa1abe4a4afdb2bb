"""Media files in and out: the inputs a run reads and the video it writes.

`probe.py` reads metadata only (image size, audio length: what the plan needs, nothing
decoded), `audio.py` loads and prepares the speakers' audio (16 kHz, loudness, the wav2vec2
features), `image.py` the conditioning image (bucket crop, person masks), `video.py` writes
and reads the mp4 (H.264 + AAC, atomic). Sits above the networks (`audio.py` runs the
wav2vec2 encoder) and below the plan (`mtlib.plan` probes the inputs).
"""
