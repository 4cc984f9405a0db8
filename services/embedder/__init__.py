"""Embedder: batches aligned faces and embeds them (SFace) through a pluggable backend."""
