"""mtlib: a small, faithful, fast re-implementation of MultiTalk inference.

MultiTalk = Wan2.1-I2V-14B (DiT, causal 3D VAE, umT5 text encoder, CLIP ViT-H/14 image
encoder) + an audio adapter fed by chinese-wav2vec2-base. mtlib plans every tensor shape
before compute, records named intermediate tensors and compares two runs tensor by tensor.

Importing `mtlib` is cheap: submodules (and torch) are imported where they are used.
"""

__version__ = "0.1.0"

from mtlib import _moved

_moved.install()  # old module names (mtlib.audio, mtlib.lora, ...) -> their package homes
