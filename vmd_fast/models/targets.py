r"""Small target networks to diagnose: classifiers, a landmark detector and a part segmenter.

Every target takes images ``(N, 3, 64, 64)`` with values in [0, 1], carries ``task`` (one of
:data:`TASKS`) and ``labels`` (the names of its outputs), and returns logits:

====================  ===========================================================
task                  output
====================  ===========================================================
``"binary"``          ``(N, 1)`` logit of the label attribute
``"multiclass"``      ``(N, K)`` logits of the K classes
``"attributes"``      ``(N, A)`` independent logits, one per attribute
``"keypoints"``       ``(N, K, H/2, W/2)`` heatmap logits; :meth:`KeypointDetector.keypoints`
                      gives ``(N, K, 2)`` pixel coordinates
``"segmentation"``    ``(N, P, H, W)`` logits of the P parts
====================  ===========================================================

The networks are deliberately tiny (tens to hundreds of thousands of parameters) so that
the package can ship them and train them on two CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TASKS",
    "ClassifierConfig",
    "Classifier",
    "DenseConfig",
    "KeypointDetector",
    "Segmenter",
    "soft_argmax",
    "build_target",
]

TASKS = ("binary", "multiclass", "attributes", "keypoints", "segmentation")


def _conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    padding = 1 if kernel in (3, 4) else 0
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class _Residual(nn.Module):
    """``(N, C, H, W) -> (N, C, H, W)``: x + BN(conv(ReLU(BN(conv(x)))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn_relu(channels, channels),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


@dataclass
class ClassifierConfig:
    """Architecture of :class:`Classifier`.

    Args:
        task: ``"binary"``, ``"multiclass"`` or ``"attributes"``.
        labels: the label attribute (binary), the class names (multiclass) or the
            attribute names (attributes).
        widths: channels after the stride-2 stem and after each further stride-2 stage;
            64x64 inputs end at ``64 / 2^len(widths)``.
        residual: stages (counted from the last) that add a residual block after their
            downsampling convolution.
    """

    task: str = "binary"
    labels: Sequence[str] = ("smiling",)
    widths: Sequence[int] = (24, 48, 64, 96)
    residual: int = 0

    def __post_init__(self):
        self.labels = tuple(self.labels)
        self.widths = tuple(int(w) for w in self.widths)
        if self.task not in ("binary", "multiclass", "attributes"):
            raise ValueError(
                f"a Classifier's task is binary, multiclass or attributes, not {self.task!r}"
            )
        if self.task == "binary" and len(self.labels) != 1:
            raise ValueError("a binary classifier has exactly one label")
        if self.task == "multiclass" and len(self.labels) < 2:
            raise ValueError("a multiclass classifier needs at least two classes")
        if not 0 <= self.residual <= len(self.widths) - 1:
            raise ValueError(f"residual must be in [0, {len(self.widths) - 1}]")

    @property
    def outputs(self) -> int:
        return 1 if self.task == "binary" else len(self.labels)


class Classifier(nn.Module):
    """A small all-convolutional classifier: strided conv stages, global average pool, linear.

    Args:
        config: :class:`ClassifierConfig`.

    Shape:
        - Input: ``(N, 3, H, W)`` in [0, 1].
        - Output: ``(N, 1)`` (binary), ``(N, K)`` (multiclass) or ``(N, A)`` (attributes) logits.

    Example:
        >>> net = Classifier(ClassifierConfig(task="multiclass", labels=("a", "b", "c")))
        >>> net(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 3])
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        self.task = config.task
        self.labels = config.labels
        w = config.widths
        layers = [_conv_bn_relu(3, w[0], kernel=4, stride=2)]
        for i in range(1, len(w)):
            layers.append(_conv_bn_relu(w[i - 1], w[i], stride=2))
            if i >= len(w) - config.residual:
                layers.append(_Residual(w[i]))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(w[-1], config.outputs)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features((x - 0.5) * 2.0)  # (N, C, h, w)
        return self.head(features.mean(dim=(2, 3)))


@dataclass
class DenseConfig:
    """Architecture of the dense-output targets (:class:`KeypointDetector`, :class:`Segmenter`).

    A U-Net on the 2x2 space-to-depth image (32x32x12 for a 64x64 input, no pixel lost):
    two stride-2 stages down, two nearest-upsampling stages up with skip connections.

    Args:
        task: ``"keypoints"`` or ``"segmentation"``.
        labels: landmark names or part names (one output map each).
        widths: channels at 1/2, 1/4 and 1/8 of the input resolution.
    """

    task: str = "segmentation"
    labels: Sequence[str] = ()
    widths: Sequence[int] = (32, 64, 96)

    def __post_init__(self):
        self.labels = tuple(self.labels)
        self.widths = tuple(int(w) for w in self.widths)
        if self.task not in ("keypoints", "segmentation"):
            raise ValueError(
                f"a dense target's task is keypoints or segmentation, not {self.task!r}"
            )
        if len(self.widths) != 3 or not self.labels:
            raise ValueError("a dense target needs three widths and at least one label")


class _UNet(nn.Module):
    """``(N, 3, H, W) -> (N, widths[0], H/2, W/2)`` features that see the whole image."""

    def __init__(self, widths: Tuple[int, int, int]):
        super().__init__()
        w1, w2, w3 = widths
        self.enc1 = nn.Sequential(_conv_bn_relu(12, w1), _conv_bn_relu(w1, w1))
        self.enc2 = nn.Sequential(_conv_bn_relu(w1, w2, stride=2), _conv_bn_relu(w2, w2))
        self.enc3 = nn.Sequential(_conv_bn_relu(w2, w3, stride=2), _Residual(w3))
        self.merge2 = _conv_bn_relu(w3 + w2, w2, kernel=1)
        self.dec2 = _conv_bn_relu(w2, w2)
        self.merge1 = _conv_bn_relu(w2 + w1, w1, kernel=1)
        self.dec1 = _conv_bn_relu(w1, w1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pixel_unshuffle((x - 0.5) * 2.0, 2)  # (N, 12, H/2, W/2)
        e1 = self.enc1(x)
        e2 = self.enc2(e1)  # (N, w2, H/4, W/4)
        e3 = self.enc3(e2)  # (N, w3, H/8, W/8)
        d2 = self.dec2(self.merge2(torch.cat([F.interpolate(e3, scale_factor=2.0), e2], 1)))
        return self.dec1(self.merge1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], 1)))


def soft_argmax(heatmaps: Tensor, stride: int = 2) -> Tensor:
    """Expected (x, y) pixel coordinates under the softmax of each heatmap.

    Cell ``(i, j)`` of a heatmap at ``1/stride`` of the image covers pixels
    ``stride*i .. stride*i + stride - 1``, so its centre is ``stride*j + (stride - 1)/2``.

    Args:
        heatmaps: (N, K, h, w) logits.
        stride: image pixels per heatmap cell.

    Returns:
        (N, K, 2) coordinates (x, y) in image pixels.

    Example:
        >>> h = torch.full((1, 1, 32, 32), -1e4)
        >>> h[0, 0, 5, 7] = 0.0
        >>> soft_argmax(h)
        tensor([[[14.5000, 10.5000]]])
    """
    n, k, h, w = heatmaps.shape
    prob = heatmaps.flatten(2).softmax(dim=-1).view(n, k, h, w)
    offset = (stride - 1) / 2.0
    xs = torch.arange(w, device=heatmaps.device, dtype=prob.dtype) * stride + offset
    ys = torch.arange(h, device=heatmaps.device, dtype=prob.dtype) * stride + offset
    x = (prob.sum(dim=2) * xs).sum(dim=-1)
    y = (prob.sum(dim=3) * ys).sum(dim=-1)
    return torch.stack([x, y], dim=-1)


class KeypointDetector(nn.Module):
    """Landmark heatmaps at half resolution, read out by :func:`soft_argmax`.

    Shape:
        - Input: ``(N, 3, H, W)`` in [0, 1].
        - Output: ``(N, K, H/2, W/2)`` heatmap logits; :meth:`keypoints`: ``(N, K, 2)``.

    Example:
        >>> net = KeypointDetector(DenseConfig(task="keypoints", labels=("a", "b")))
        >>> x = torch.rand(2, 3, 64, 64)
        >>> net(x).shape, net.keypoints(x).shape
        (torch.Size([2, 2, 32, 32]), torch.Size([2, 2, 2]))
    """

    def __init__(self, config: DenseConfig):
        super().__init__()
        if config.task != "keypoints":
            raise ValueError("KeypointDetector needs task='keypoints'")
        self.config = config
        self.task = config.task
        self.labels = config.labels
        self.backbone = _UNet(config.widths)
        self.head = nn.Conv2d(config.widths[0], len(config.labels), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def keypoints(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, K, 2) landmark pixel coordinates (x, y)."""
        return soft_argmax(self(x), stride=2)


class Segmenter(nn.Module):
    """Part logits at full resolution (sub-pixel convolution from the half-resolution U-Net).

    Shape:
        - Input: ``(N, 3, H, W)`` in [0, 1].
        - Output: ``(N, P, H, W)`` logits.

    Example:
        >>> net = Segmenter(DenseConfig(task="segmentation", labels=("bg", "face", "hair")))
        >>> net(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(self, config: DenseConfig):
        super().__init__()
        if config.task != "segmentation":
            raise ValueError("Segmenter needs task='segmentation'")
        self.config = config
        self.task = config.task
        self.labels = config.labels
        self.backbone = _UNet(config.widths)
        self.head = nn.Conv2d(config.widths[0], 4 * len(config.labels), 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.head(self.backbone(x)), 2)


def build_target(config: dict) -> nn.Module:
    """A target network from a JSON-able config (``{"task": ..., "labels": ..., ...}``).

    Example:
        >>> build_target({"task": "binary", "labels": ["eyeglasses"]}).task
        'binary'
    """
    config = dict(config)
    if config.get("task") in ("keypoints", "segmentation"):
        dense = DenseConfig(**config)
        return KeypointDetector(dense) if dense.task == "keypoints" else Segmenter(dense)
    return Classifier(ClassifierConfig(**config))
