"""The compile pipeline: split, plan each piece, compile it (or load it), stitch."""
