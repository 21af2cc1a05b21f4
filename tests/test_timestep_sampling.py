import pytest
import torch

from difflab.timestep_sampling import LossAwareTimesteps, UniformTimesteps, make_timestep_sampler


def test_uniform_until_warm_then_proportional_to_rms_loss():
    s = LossAwareTimesteps(4, history=2, uniform_prob=0.0)
    g = torch.Generator().manual_seed(0)
    t, w = s.sample(8, g)
    assert torch.all(w == 1)                       # not warmed up: uniform
    # loss 1 at t=0, 3 at t=1..3 -> p proportional to (1, 3, 3, 3)
    for _ in range(2):
        s.update(torch.arange(4), torch.tensor([1.0, 3.0, 3.0, 3.0]))
    assert s.warmed_up
    torch.testing.assert_close(s.probabilities(), torch.tensor([0.1, 0.3, 0.3, 0.3], dtype=torch.float64))
    t, w = s.sample(20000, g)
    freq = torch.bincount(t, minlength=4) / 20000
    assert torch.allclose(freq, torch.tensor([0.1, 0.3, 0.3, 0.3]), atol=0.015)
    torch.testing.assert_close(w[t == 0][0], torch.tensor(1 / (4 * 0.1)))


def test_importance_weights_make_the_estimate_unbiased():
    T = 50
    s = LossAwareTimesteps(T, history=3)
    L = torch.linspace(0.01, 5.0, T) ** 2          # very uneven terms
    for _ in range(3):
        s.update(torch.arange(T), L)
    g = torch.Generator().manual_seed(1)
    t, w = s.sample(200000, g)
    est = (w * L[t]).mean()
    assert float(est) == pytest.approx(float(L.mean()), rel=0.01)
    # and with lower variance than uniform sampling
    tu = torch.randint(0, T, (200000,), generator=g)
    assert float((w * L[t]).var()) < float(L[tu].var())


def test_history_is_a_ring_and_state_round_trips():
    s = LossAwareTimesteps(2, history=2)
    s.update(torch.tensor([0, 0, 0]), torch.tensor([1.0, 2.0, 3.0]))
    assert s.losses[0].tolist() == [2.0, 3.0] and int(s.counts[0]) == 3
    r = LossAwareTimesteps(2, history=2)
    r.load_state_dict(s.state_dict())
    assert torch.equal(r.losses, s.losses) and torch.equal(r.counts, s.counts)


def test_factory_and_errors():
    assert isinstance(make_timestep_sampler("uniform", 10), UniformTimesteps)
    with pytest.raises(ValueError, match="allowed"):
        make_timestep_sampler("importance", 10)
