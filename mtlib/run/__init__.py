"""The run: from a plan to an mp4 (filled in below)."""
