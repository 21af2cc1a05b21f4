"""difflab.compile: torch.compile behind an output check, a speed probe and a fallback to eager.

One real TorchInductor compile of a tiny network (a few seconds with a warm inductor cache, about
20 s on a cold one on a busy 2-core machine: marked slow); the decision logic is tested with stand-in
"compiled" functions, which cost nothing.
"""

import time

import pytest
import torch
from torch import nn

from difflab.compile import CompiledModel, compile_model, inductor_cache_dir, max_abs_diff, outputs_close


class TinyNet(nn.Module):
    """conv -> GroupNorm -> SiLU -> conv, with a timestep shift: the U-Net's fusible pattern in small."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(2, 8, 3, padding=1)
        self.norm = nn.GroupNorm(4, 8)
        self.conv2 = nn.Conv2d(8, 2, 3, padding=1)
        self.embed = nn.Embedding(10, 8)

    def forward(self, x, t):
        h = self.conv1(x) + self.embed(t)[:, :, None, None]
        return self.conv2(nn.functional.silu(self.norm(h)))


def _inputs(b=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, 8, 8, generator=g), torch.randint(0, 10, (b,), generator=g)


@pytest.mark.slow
def test_inductor_output_and_training_step_match_eager():
    net = TinyNet()
    x, t = _inputs()
    logs = []
    cm = compile_model(net, probe_calls=0, log=logs.append)
    with torch.no_grad():
        out = cm(x, t)
        ref = net(x, t)
    assert cm.report.status == "compiled", cm.report.message
    assert cm.report.compile_seconds > 0 and cm.report.max_abs_diff < 1e-4
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert logs and "compiled with torch.compile (inductor)" in logs[-1]
    # a training step through the compiled network: same loss, same gradients
    grads = []
    for f in (cm, net):
        net.zero_grad()
        loss = f(x, t).square().mean()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # the parameters are the module's own: checkpoints and EMA see no wrapper
    assert cm.module is net


@pytest.mark.slow
def test_frozen_inference_matches_eager_and_a_changed_parameter_goes_back_to_eager():
    net = TinyNet().eval()
    x, t = _inputs()
    logs = []
    unfrozen = compile_model(TinyNet().eval(), probe_calls=0)   # compiled first: its graph must not be reused
    cm = compile_model(net, probe_calls=0, freeze=True, log=logs.append)
    with torch.no_grad():
        unfrozen(x, t)
        out = cm(x, t)
        torch.testing.assert_close(out, net(x, t), rtol=1e-4, atol=1e-5)
        assert cm.report.status == "compiled", cm.report.message
        if torch.backends.mkldnn.is_available() and x.device.type == "cpu":
            # frozen on CPU: the convolutions run on weights pre-packed for oneDNN, which eager never calls
            from torch.profiler import profile
            for f, packed in ((cm, True), (unfrozen, False)):
                with profile() as prof:
                    f(x, t)
                ops = {e.key for e in prof.key_averages()}
                assert any(k.startswith("mkldnn::_convolution_pointwise") for k in ops) == packed, sorted(ops)
        torch.testing.assert_close(cm(*_inputs(seed=2)), net(*_inputs(seed=2)), rtol=1e-4, atol=1e-5)
        # the weights were folded into the compiled code: a change must not be silently ignored
        net.conv2.weight.mul_(2.0)
        changed = cm(x, t)
    assert cm.report.status == "eager" and "parameters changed" in logs[-1]
    with torch.no_grad():
        torch.testing.assert_close(changed, net(x, t))
    assert not torch.allclose(changed, out)


def _with_compiled(fn, net=None, **options):
    """A CompiledModel whose "compiled" function is ``fn`` (a stand-in: no real compilation)."""
    net = net or TinyNet()
    cm = CompiledModel(net, **options)
    cm.compiled = fn
    return cm, net


def test_a_frozen_model_checks_its_parameters_on_every_call():
    """Stand-in compiled function: only the version check is under test (no compilation)."""
    calls = []
    cm, net = _with_compiled(lambda x, t: calls.append(1) or torch.zeros(()), freeze=True, check=False, log=print)
    x, t = _inputs()
    with torch.no_grad():
        cm(x, t), cm(x, t)
        assert len(calls) == 2 and cm.report.status == "compiled"
        net.load_state_dict(TinyNet().state_dict())   # an in-place copy: new versions, even with equal values
        out = cm(x, t)
    assert len(calls) == 2 and cm.report.status == "eager" and out.shape == (4, 2, 8, 8)
    # an unfrozen model does not track versions
    cm2, net2 = _with_compiled(lambda x, t: torch.zeros(()), check=False)
    with torch.no_grad():
        cm2(x, t)
        net2.conv1.weight.add_(1)
        cm2(x, t)
    assert cm2.report.status == "compiled"


def test_a_compile_failure_falls_back_to_eager_with_one_line():
    def broken(*args):
        raise RuntimeError("C++ compile error: cannot find gcc\nlong traceback ...")

    logs = []
    cm, net = _with_compiled(broken, log=logs.append)
    x, t = _inputs()
    with torch.no_grad():
        out = cm(x, t)
        torch.testing.assert_close(out, net(x, t), rtol=0, atol=0)
        assert cm(x, t) is not None   # later calls run eager without trying again
    assert cm.report.status == "eager"
    assert logs == ["torch.compile (inductor) failed (RuntimeError: C++ compile error: cannot find gcc); "
                    "running eager"]


def test_a_wrong_output_falls_back_to_eager():
    cm, net = _with_compiled(lambda x, t: TinyNet()(x, t) + 1e-2, probe_calls=0)
    x, t = _inputs()
    with torch.no_grad():
        out = cm(x, t)
        torch.testing.assert_close(out, net(x, t), rtol=0, atol=0)   # the eager output is returned
    assert cm.report.status == "eager" and "differs from eager by up to 0.01" in cm.report.message
    assert cm.report.max_abs_diff == pytest.approx(1e-2, rel=1e-3)


class SlowNet(TinyNet):
    def forward(self, x, t):
        time.sleep(0.02)
        return super().forward(x, t)


def test_a_slower_compiled_model_falls_back_and_a_faster_one_is_kept():
    x, t = _inputs()
    net = TinyNet()

    def slow(*args):
        time.sleep(0.05)
        return net(*args)

    cm, _ = _with_compiled(slow, net=net, probe_calls=2)
    with torch.no_grad():
        for _ in range(4):
            out = cm(x, t)
    assert cm.report.status == "eager" and "not faster than eager" in cm.report.message
    torch.testing.assert_close(out, net(x, t), rtol=0, atol=0)

    slow_net = SlowNet()
    plain = TinyNet()   # same initial weights (seeded), no sleep
    cm, _ = _with_compiled(lambda *a: plain(*a), net=slow_net, probe_calls=2)
    with torch.no_grad():
        calls = [cm(x, t) for _ in range(4)]
    assert cm.report.status == "compiled" and cm.report.speedup > 2, cm.report
    assert "s per call vs" in cm.report.message
    assert len(cm.report.compiled_seconds) == 2 and len(cm.report.eager_seconds) == 3
    for c in calls:
        torch.testing.assert_close(c, slow_net(x, t), rtol=0, atol=0)


def test_under_autograd_only_failures_fall_back():
    """Training calls are neither compared nor timed (dropout and the lazily compiled backward would make
    both unfair): a stand-in that differs is kept under autograd."""
    net = TinyNet()
    cm, _ = _with_compiled(lambda x, t: net(x, t) + 1.0, net=net)
    out = cm(*_inputs())
    assert cm.report.status == "compiled" and out.requires_grad
    assert "compiled with torch.compile" in cm.report.message


def test_output_comparison_helpers():
    a = torch.zeros(3)
    assert max_abs_diff((a, {"b": a + 2}), (a, {"b": a})) == 2.0
    assert max_abs_diff(a, torch.zeros(4)) == float("inf")
    assert outputs_close(a + 1e-5, a, rtol=0, atol=1e-4) and not outputs_close(a + 1e-3, a, rtol=0, atol=1e-4)
    assert outputs_close(torch.full((2,), 100.0), torch.full((2,), 100.05), rtol=1e-3, atol=0)


def test_options_are_validated_and_the_cache_folder_is_named(monkeypatch):
    with pytest.raises(ValueError, match="backend"):
        compile_model(TinyNet(), backend="tvm")
    with pytest.raises(ValueError, match="probe_calls"):
        compile_model(TinyNet(), probe_calls=-1)
    with pytest.raises(ValueError, match="freezing"):
        compile_model(TinyNet(), backend="aot_eager", freeze=True)
    with pytest.raises(ValueError, match="mode"):
        compile_model(TinyNet(), mode="max-autotune", freeze=True)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/some/cache")
    assert inductor_cache_dir() == "/some/cache"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert "torchinductor" in inductor_cache_dir()


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward graph failed to compile")


def test_a_backward_compile_failure_is_caught_on_the_first_training_call():
    """The trial backward of the first call under autograd surfaces a failure of the (lazily compiled)
    backward graph there, so training falls back to eager instead of crashing in loss.backward()."""
    net = TinyNet()
    logs = []
    cm, _ = _with_compiled(lambda x, t: _FailingBackward.apply(net(x, t)), net=net, log=logs.append)
    x, t = _inputs()
    out = cm(x, t)
    out.square().mean().backward()        # the eager graph: no failure
    assert cm.report.status == "eager" and "backward graph failed to compile" in logs[-1]
    assert all(p.grad is not None for p in net.parameters())


class DropoutNet(TinyNet):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, x, t):
        return self.drop(super().forward(x, t))


def test_the_trial_step_leaves_no_gradient_and_no_random_draw_behind():
    """The first training call's trial forward/backward runs under fork_rng: the call's dropout mask is the one
    an eager call would draw, and no .grad is accumulated by the trial."""
    net = DropoutNet().train()
    x, t = _inputs()
    calls = []
    cm, _ = _with_compiled(lambda *a: (calls.append(1), net(*a))[1], net=net)
    torch.manual_seed(7)
    out = cm(x, t)
    torch.manual_seed(7)
    ref = net(x, t)
    assert len(calls) == 2                      # the trial and the call itself
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert all(p.grad is None for p in net.parameters())
