"""Pixels for InternVL: decoding and sanitising (images, video) and the tiling that turns them into model input."""
