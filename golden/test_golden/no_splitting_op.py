# Stitching source emitted by stitch.codegen (format 5).
# pieces: 1 (1 called through __vllm_submods__, 0 inlined); constants: 0
# graph: sha256:b1c123df4b6774d1


def execution_fn(x, *, __vllm_submods__):
    # the compiled pieces, bound to locals once per forward
    (submod_0,) = __vllm_submods__
    # fc1 .. norm
    norm = submod_0(x)
    return norm
