"""The FID Inception-v3 network (TF "2015-12-05" graph as ported by pytorch-fid), plain torch.

This is the network behind published FID numbers: torchvision's Inception-v3 layout with the
patches of the TensorFlow FID graph (pytorch-fid's ``FIDInceptionA/C/E_1/E_2``):

- Mixed_5b-5d (A), Mixed_6b-6e (C) and Mixed_7b (E_1) average-pool their ``branch_pool``
  *without* counting the zero padding (``count_include_pad=False``), as TF does;
- Mixed_7c (E_2) max-pools its ``branch_pool`` instead of average-pooling;
- the classifier has 1008 outputs (``fc``), unused for FID.

Features are the 2048-d global average pool of Mixed_7c ("pool3"). Inputs are [-1, 1]
images (the range the network was trained on), resized to 299 x 299 with bilinear
interpolation (``align_corners=False``), as pytorch-fid does.

Parameter names are torchvision's ``Inception3`` names (``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch5x5_1.bn.running_mean``, ..., ``fc.weight``), which are the keys of
pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``, so that file loads as is (with
``torch.load(weights_only=True)``), as does a safetensors file with the same keys.
No download happens here: fetch ``FID_WEIGHTS_URL`` yourself and pass the local path.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from difflab.eval.featurizers import Featurizer, convert_channels

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
# torch.hub convention: the file name carries the first hex digits of the file's SHA-256.
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
FID_INPUT_SIZE = 299
FID_FEATURE_DIM = 2048
FID_NUM_CLASSES = 1008
BN_EPS = 1e-3  # TF's batch-norm epsilon


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU; keys ``conv.*`` and ``bn.*``."""

    def __init__(self, c_in: int, c_out: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TF's average pool ignores the zero padding.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a)."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        b3d = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b3d, bp], 1)


class FIDInceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b-e)."""

    def __init__(self, c_in: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7d = layer(b7d)
        bp = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([b1, b7, b7d, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class FIDInceptionE(nn.Module):
    """8x8 block with expanded filter banks (Mixed_7b: ``pool="avg"``, Mixed_7c: ``pool="max"``).

    pytorch-fid calls these ``FIDInceptionE_1`` (avg, padding excluded) and ``FIDInceptionE_2``
    (max pooling, a quirk of the TF FID graph).
    """

    def __init__(self, c_in: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        h = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(h), self.branch3x3_2b(h)], 1)
        h = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(h), self.branch3x3dbl_3b(h)], 1)
        if self.pool == "avg":
            pooled = _tf_avg_pool(x)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        bp = self.branch_pool(pooled)
        return torch.cat([b1, b3, b3d, bp], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 of the TF FID graph. ``forward`` returns pool3 features ``[N, 2048]``."""

    def __init__(self, resize_input: bool = True):
        super().__init__()
        self.resize_input = resize_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.fc = nn.Linear(FID_FEATURE_DIM, FID_NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[N, 3, H, W]`` in [-1, 1] -> pool3 ``[N, 2048]``."""
        assert x.ndim == 4 and x.shape[1] == 3, x.shape
        if self.resize_input and tuple(x.shape[-2:]) != (FID_INPUT_SIZE, FID_INPUT_SIZE):
            x = F.interpolate(x, size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # 64 x 147 x 147
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 73 x 73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # 192 x 71 x 71
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 35 x 35
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)  # ... -> 2048 x 8 x 8
        return x.mean(dim=(2, 3))  # global average pool: "pool3"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """1008-way logits of the TF graph (not used for FID)."""
        return self.fc(self.features(x))


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_inception_state_dict(path: str | os.PathLike, check_hash: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``.pth`` state dict (``weights_only=True``, no pickle code)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"no Inception weights at {path}; download {FID_WEIGHTS_URL} (or a safetensors conversion) and pass its path"
        )
    if check_hash:
        digest = sha256_of(path)
        if not digest.startswith(FID_WEIGHTS_SHA256_PREFIX):
            raise ValueError(f"{path}: SHA-256 {digest} does not start with {FID_WEIGHTS_SHA256_PREFIX} (FID weights)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors")
    return state


def load_fid_inception(
    path: str | os.PathLike, device: str | torch.device = "cpu", check_hash: bool = False
) -> FIDInceptionV3:
    """Build ``FIDInceptionV3`` and load the weights at ``path``; returned in eval mode.

    Every parameter and buffer must be present with the right shape (BN's
    ``num_batches_tracked``, absent from the TF port, may be missing; ``fc`` may be missing too,
    pool3 does not use it). Anything else missing or unexpected raises ``ValueError``.
    """
    state = load_inception_state_dict(path, check_hash=check_hash)
    model = FIDInceptionV3()
    own = model.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked") or k.startswith("fc.")}
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{path} is not an FID Inception state dict: {len(missing)} missing keys {missing[:5]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:5]}"
        )
    bad = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"{path}: wrong shapes for {bad[:5]} (e.g. {tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)})")
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()


class InceptionFeaturizer(Featurizer):
    """pool3 features (2048-d) of the FID Inception; grey images are repeated to RGB."""

    def __init__(self, model: FIDInceptionV3, name: str = "inception-v3-fid", device: str | torch.device | None = None):
        self.model = model if device is None else model.to(device)
        self.name = name
        self.feature_dim = FID_FEATURE_DIM
        self.image_size = FID_INPUT_SIZE
        self.channels = 3
        self.device = next(model.parameters()).device

    @classmethod
    def from_weights(cls, path: str | os.PathLike, device: str | torch.device = "cpu", check_hash: bool = False):
        return cls(load_fid_inception(path, device=device, check_hash=check_hash))

    def module(self) -> nn.Module:
        return self.model

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        # Resize exactly as pytorch-fid does (bilinear, no antialias), not with the base's antialiasing.
        x = convert_channels(x, 3)
        if tuple(x.shape[-2:]) != (FID_INPUT_SIZE, FID_INPUT_SIZE):
            x = F.interpolate(x, size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear", align_corners=False)
        return x

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)
