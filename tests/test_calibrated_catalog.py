"""The shipped catalog defaults (calibrated.toml) against measurements no one here wrote:
Splitwise Llama-2-70B prefill and decode at TP 4, the configuration held out of the fit."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "calibration"))
import data  # noqa: E402

from hermes_jax import EngineSpec, Parallelism, get_hardware, get_model, static_batch  # noqa: E402

pytestmark = pytest.mark.skipif(not data.SPLITWISE.exists(),
                                reason=f"measured data not found at {data.SPLITWISE} (shared/data beside the checkout)")


@pytest.mark.parametrize("hardware", ["a100-80gb", "h100-sxm"])
def test_catalog_defaults_predict_held_out_splitwise(hardware):
    rows = data.splitwise([])
    rows = rows[(rows.hardware == hardware) & (rows.tensor_parallel == 4)]
    hw = get_hardware(hardware)
    assert hw.spec.calibrated
    engine = EngineSpec(get_model("llama-2-70b"), hw.spec, Parallelism(tp=4))
    est = static_batch(engine, hw.params, rows.batch_size.to_numpy(float), rows.prompt_size.to_numpy(float),
                       rows.generated.to_numpy(float))
    prefill_err = np.mean(np.abs(np.asarray(est.prefill_s) * 1e3 / rows.prompt_time.to_numpy() - 1))
    decode_err = np.mean(np.abs(np.asarray(est.tpot_s) * 1e3 / rows.token_time.to_numpy() - 1))
    # Measured by calibration/fit_kernels.py (README table): decode 2.3% / 2.7%, prefill 11.6% / 8.0%.
    assert decode_err < 0.05
    assert prefill_err < 0.13
    # and the uncalibrated datasheet roofline is far off, so the check has teeth
    ideal = static_batch(engine, get_hardware(hardware, ideal=True).params, rows.batch_size.to_numpy(float),
                         rows.prompt_size.to_numpy(float), rows.generated.to_numpy(float))
    assert np.mean(np.abs(np.asarray(ideal.tpot_s) * 1e3 / rows.token_time.to_numpy() - 1)) > 0.3
