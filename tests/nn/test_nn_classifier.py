import pytest
import torch

from _nn_helpers import perturb_
from difflab.nn import CLASSIFIER_PRESETS, ClassifierConfig, EncoderClassifier, get_classifier_preset


@pytest.mark.parametrize("name", list(CLASSIFIER_PRESETS))
def test_preset_logit_shapes(name):
    cfg = CLASSIFIER_PRESETS[name]
    model = EncoderClassifier(cfg).eval()
    with torch.no_grad():
        logits = model(torch.randn(3, cfg.in_channels, cfg.image_size, cfg.image_size), torch.tensor([0, 5, 999]))
    assert logits.shape == (3, cfg.num_classes) and torch.isfinite(logits).all()


@pytest.mark.parametrize("pool", ["attention", "adaptive"])
def test_log_softmax_gradient_flows_to_input(pool):
    torch.manual_seed(0)
    model = perturb_(EncoderClassifier(get_classifier_preset("tiny", pool=pool))).eval()
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    t = torch.tensor([1, 50, 300, 900])
    y = torch.tensor([0, 1, 2, 0])
    log_p = torch.log_softmax(model(x, t), dim=-1)[torch.arange(4), y]
    (grad,) = torch.autograd.grad(log_p.sum(), x, retain_graph=True)
    assert grad.shape == x.shape and torch.isfinite(grad).all()
    assert (grad.flatten(1).abs().sum(1) > 0).all()          # every sample gets a gradient
    # sample i's log-prob depends only on x[i]
    (g0,) = torch.autograd.grad(log_p[0], x)
    assert g0[1:].abs().sum() == 0


def test_logits_depend_on_timestep_and_gradients_reach_parameters():
    torch.manual_seed(0)
    model = perturb_(EncoderClassifier(get_classifier_preset("tiny", dropout=0.1))).train()
    x = torch.randn(2, 1, 8, 8)
    logits = model(x, torch.tensor([3, 3]))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x, torch.tensor([3, 3])), model(x, torch.tensor([800, 800])))


def test_classifier_config_validation():
    with pytest.raises(ValueError, match="pool"):
        get_classifier_preset("tiny", pool="max")
    with pytest.raises(ValueError, match="not divisible by 2"):
        ClassifierConfig(image_size=28, channel_mult=(1, 2, 2, 2), attention_resolutions=(), norm_groups=8)
    with pytest.raises(ValueError, match="x must be"):
        EncoderClassifier(get_classifier_preset("tiny"))(torch.randn(1, 1, 9, 9), torch.tensor([0]))
