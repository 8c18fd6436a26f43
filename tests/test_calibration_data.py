"""Data-cleaning rules of calibration/data.py on synthetic series (no measured data needed)."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "calibration"))
import data  # noqa: E402


def test_slower_than_larger_flags_only_rows_a_larger_message_beats():
    # A timer floor (60) over a fast mode (20) that rises with size: the floor rows before a fast row
    # are flagged; the rising tail and the final floor-level row (nothing larger beats it) are kept.
    times = np.array([20.0, 60.0, 61.0, 21.0, 22.0, 30.0, 40.0, 60.0])
    assert data.slower_than_larger(times, 0.2).tolist() == [False, True, True, False, False, False, False, False]


def test_slower_than_larger_keeps_monotone_and_noisy_within_tolerance():
    times = np.linspace(1.0, 5.0, 9)
    assert not data.slower_than_larger(times, 0.2).any()
    wiggle = np.array([10.0, 11.5, 10.0, 12.0])  # 15% over a later row: inside a 20% tolerance
    assert not data.slower_than_larger(wiggle, 0.2).any()
    assert data.slower_than_larger(wiggle, 0.1).tolist() == [False, True, False, False]
