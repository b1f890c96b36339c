"""Training targets and weights against diffusers (DDPMScheduler, compute_snr)."""

import numpy as np
import pytest

try:  # dev extra: only the parity tests use these (conftest skips them without it)
    import torch
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr
except ModuleNotFoundError:
    torch = DDPMScheduler = compute_snr = None

from diffjax.diffusion import losses
from diffjax.diffusion.schedules import alphas_cumprod_for


@pytest.fixture(scope="module")
def ref():
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                          beta_start=0.00085, beta_end=0.012)
    acp = alphas_cumprod_for("scaled_linear", 1000, 0.00085, 0.012)
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(6, 4, 8, 8)).astype(np.float32)
    noise = rng.normal(size=x0.shape).astype(np.float32)
    t = np.array([0, 1, 250, 500, 998, 999])
    return sched, acp, x0, noise, t


@pytest.mark.parity
def test_noising_and_targets_match_diffusers(ref):
    sched, acp, x0, noise, t = ref
    # Both sides are float32 arithmetic on the same abar; 1e-6 abs is float32 rounding of
    # products of O(1) numbers (measured max diff ~2e-7).
    tt = torch.from_numpy(t)
    np.testing.assert_allclose(np.asarray(losses.add_noise(x0, noise, acp, t)),
                               sched.add_noise(torch.from_numpy(x0), torch.from_numpy(noise),
                                               tt).numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(losses.target("v_prediction", x0, noise, acp, t)),
                               sched.get_velocity(torch.from_numpy(x0), torch.from_numpy(noise),
                                                  tt).numpy(), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(losses.target("epsilon", x0, noise, acp, t)), noise)
    np.testing.assert_array_equal(np.asarray(losses.target("sample", x0, noise, acp, t)), x0)


@pytest.mark.parity
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_match_diffusers_recipe(ref, prediction_type):
    sched, acp, _, _, t = ref
    tt = torch.from_numpy(t)
    snr = compute_snr(sched, tt)
    # diffusers examples/text_to_image/train_text_to_image.py, --snr_gamma 5.0:
    w = torch.stack([snr, 5.0 * torch.ones_like(tt)], dim=1).min(dim=1)[0]
    if prediction_type == "epsilon":
        w = w / snr
    elif prediction_type == "v_prediction":
        w = w / (snr + 1)
    # SNR spans 1e-5..1e3 here; float32 division on both sides -> 1e-5 relative.
    np.testing.assert_allclose(np.asarray(losses.snr(acp, t)), snr.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(losses.loss_weights(prediction_type, acp, t, 5.0)),
                               w.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(losses.loss_weights(prediction_type, acp, t, None)),
                                  np.ones(len(t), np.float32))


def test_weighted_mse_and_errors():
    pred = np.zeros((2, 3), np.float32)
    tgt = np.array([[1, 1, 1], [2, 2, 2]], np.float32)
    assert float(losses.weighted_mse(pred, tgt, np.array([1.0, 0.5]))) == pytest.approx(1.5)
    with pytest.raises(ValueError, match=r"prediction shape \(2, 3\) != target shape \(3, 2\)"):
        losses.weighted_mse(pred, tgt.T, np.ones(2))
    with pytest.raises(ValueError, match="prediction_type 'flow' is not one of"):
        losses.target("flow", pred, pred, np.ones(10), np.zeros(2, int))
    with pytest.raises(ValueError, match="snr_gamma must be > 0"):
        losses.loss_weights("epsilon", np.full(10, 0.5), np.zeros(2, int), 0.0)
