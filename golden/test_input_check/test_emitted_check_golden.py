# Stitch input check of tests.Model.forward (2 signature(s))
# input check format 1, sha256 e3786262bc0c5a28

# Signature 0
#   input_ids: int64[n0] on cpu, contiguous, values in [0, 128)
#   positions: int64[n0] on cpu, contiguous
#   hidden: float32[n0, 64] on cpu, contiguous
#   flag: True
SIGNATURE_0 = __stitch_tensor_guards__(
    ("input_ids", "int64", "cpu", (None,), (1,)),
    ("positions", "int64", "cpu", (None,), (1,)),
    ("hidden", "float32", "cpu", (None, 64), (64, 1)),
)

# Signature 1
#   input_ids: int32[n0] on cpu, contiguous, values in [0, 128)
#   positions: int64[n0] on cpu, contiguous
#   hidden: float32[n0, 64] on cpu, contiguous
#   flag: True
SIGNATURE_1 = __stitch_tensor_guards__(
    ("input_ids", "int32", "cpu", (None,), (1,)),
    ("positions", "int64", "cpu", (None,), (1,)),
    ("hidden", "float32", "cpu", (None, 64), (64, 1)),
)


def check_forward(
    self,
    input_ids,
    positions,
    hidden,
    flag,
    *,
    __stitch_forwards__,
    __stitch_mismatch__,
):
    """The forward compiled for these inputs, else __stitch_mismatch__."""
    # signature 0
    if (
        SIGNATURE_0.check(input_ids, positions, hidden)
        and input_ids.numel() == positions.numel() == hidden.numel() // 64
        and __stitch_in_range__(input_ids, 128)
        and flag is True
    ):
        return __stitch_forwards__[0](self, input_ids, positions, hidden, flag)
    # signature 1
    if (
        SIGNATURE_1.check(input_ids, positions, hidden)
        and input_ids.numel() == positions.numel() == hidden.numel() // 64
        and __stitch_in_range__(input_ids, 128)
        and flag is True
    ):
        return __stitch_forwards__[1](self, input_ids, positions, hidden, flag)
    return __stitch_mismatch__(self, input_ids, positions, hidden, flag)
