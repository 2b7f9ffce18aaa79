"""Jinja templates of emitted stitching source (package data of stitch)."""
