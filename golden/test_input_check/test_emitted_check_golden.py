# Stitch input check of tests.Model.forward (2 signature(s))
# input check format 2, sha256 e3786262bc0c5a28

# Signature 0
#   input_ids: int64[n0] on cpu, contiguous, values in [0, 128)
#   positions: int64[n0] on cpu, contiguous
#   hidden: float32[n0, 64] on cpu, contiguous
#   flag: True
SIGNATURE_0 = __stitch_tensor_guards__(
    ("input_ids", "int64", "cpu", ("n0",), (1,), True),
    ("positions", "int64", "cpu", ("n0",), (1,), True),
    ("hidden", "float32", "cpu", ("n0", 64), (64, 1), True),
)

# Signature 1
#   input_ids: int32[n0] on cpu, contiguous, values in [0, 128)
#   positions: int64[n0] on cpu, contiguous
#   hidden: float32[n0, 64] on cpu, contiguous
#   flag: True
SIGNATURE_1 = __stitch_tensor_guards__(
    ("input_ids", "int32", "cpu", ("n0",), (1,), True),
    ("positions", "int64", "cpu", ("n0",), (1,), True),
    ("hidden", "float32", "cpu", ("n0", 64), (64, 1), True),
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
    try:
        n0 = input_ids.shape[0]
    except (AttributeError, IndexError, TypeError):
        n0 = None
    # signature 0
    if (
        SIGNATURE_0[n0].check(input_ids, positions, hidden)
        and (
            0 <= input_ids.item() < 128
            if n0 == 1
            else __stitch_in_range__(input_ids, 128)
        )
        and flag is True
    ):
        return __stitch_forwards__[0](self, input_ids, positions, hidden, flag)
    # signature 1
    if (
        SIGNATURE_1[n0].check(input_ids, positions, hidden)
        and (
            0 <= input_ids.item() < 128
            if n0 == 1
            else __stitch_in_range__(input_ids, 128)
        )
        and flag is True
    ):
        return __stitch_forwards__[1](self, input_ids, positions, hidden, flag)
    return __stitch_mismatch__(self, input_ids, positions, hidden, flag)
