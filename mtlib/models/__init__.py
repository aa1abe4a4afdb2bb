"""MultiTalk's networks, one file each, in the official state-dict key layout.

dit.py (WanModel + audio adapter), vae.py (causal 3D VAE), clip.py (ViT-H/14 visual tower
of XLM-R CLIP), t5.py (umT5 encoder), wav2vec.py (chinese-wav2vec2-base via transformers),
tiny.py (random tiny checkpoints written in the real file formats).
"""
