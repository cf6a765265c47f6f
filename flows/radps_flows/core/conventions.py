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
