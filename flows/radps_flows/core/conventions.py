"""Sign conventions shared by everything that makes or reads visibilities.

xradio's UVW (converted from CASA MeasurementSets, and what anything written with xradio's
schema must follow) is the *negative* of the textbook baseline vector for the measurement
equation V = S exp(-2 pi i (u l + v m + w (n - 1))): imaging the real VLA set with textbook
signs gives CASA's image point-reflected; with the sign turned it matches CASA (same peak
pixel, correlation 0.99999). The synthesizer writes data with this same relation so simulated
and real data image alike.
"""

MSV4_UVW_SIGN = -1
"""Multiply xradio/MSv2 UVW by this to get textbook UVW (measured against CASA on the VLA set)."""


def ducc0_flips(uvw_sign: int) -> dict[str, bool]:
    """ducc0 wgridder flips that put images in FITS orientation (``[y, x]`` after a transpose,
    x towards -l) for UVW of sign ``uvw_sign`` (+1 textbook, :data:`MSV4_UVW_SIGN` xradio's).

    With textbook UVW: flip u so that ducc0's first axis runs along -l, and flip w for ducc0's
    w sign. With the negated vector the complementary flips do the same, so UVW is never
    copied to change its sign. Gridding and degridding must use the same flips."""
    textbook = uvw_sign > 0
    return {"flip_u": textbook, "flip_v": not textbook, "flip_w": textbook}


SINGLE_PRECISION_EPSILON = 2e-5
"""The gridder (and degridder) works in single precision at this accuracy and coarser:
about 1.6x faster, and ducc0's float32 kernels reach it."""
