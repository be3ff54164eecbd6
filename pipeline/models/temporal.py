"""The registered models: ``cnn_lstm``, ``frame`` and ``frame_mean``.

- ``cnn_lstm``: the encoder on every frame (``TimeDistributed``: time folded into the batch),
  pooled features -> stacked LSTMs -> optional dense layer -> linear head.
- ``frame``: the same encoder on one image -> linear head (``tta="flip"``: outside training,
  the mean logit of the image and its mirror image).
- ``frame_mean``: a ``frame`` model applied to every frame of a clip; per-frame probabilities
  averaged over valid frames, returned as a logit (built from a trained ``frame`` model with
  ``FrameMean.from_frame`` or ``checkpoint.build_model(ckpt, as_model="frame_mean")``).

Masking (padded slots, mask 0) in the LSTM: ``pack_padded_sequence`` only handles padding at the
end, but a clip's gaps can sit anywhere. So the features of padded slots are zeroed before the
LSTM (their pixels never matter) and the readout ignores them: ``readout="last"`` takes the
forward direction's output at the last valid slot (and the backward direction's at the first
valid slot), ``readout="mean"`` averages the outputs over valid slots. An all-ones mask and no
mask give identical outputs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from pipeline.models.backbones import create_backbone
from pipeline.models.factory import register_model

FRAME_EPS = 1e-6  # frame_mean clamps the mean probability into [eps, 1-eps]: finite logits


def frame_mean_p(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The ``frame_mean`` rule, the one place it is computed: per-frame p_fake (B, T) and mask
    (B, T) -> (B,) mean over valid frames, clamped into [FRAME_EPS, 1 - FRAME_EPS].

    Computes in ``probs``' dtype; padded slots (mask 0) do not count, whatever their value.
    """
    m = torch.ones_like(probs) if mask is None else mask.to(probs.dtype)  # (B, T)
    p = (probs * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B,)
    return p.clamp(FRAME_EPS, 1 - FRAME_EPS)


def _memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


class TimeDistributed(nn.Module):
    """Apply an image encoder to every frame: (B, T, C, H, W) -> (B, T, F).

    Frames go to the encoder in channels_last layout (1.15-1.5x faster convolutions measured on
    CPU here; training also converts the weights); set ``channels_last = False`` to compare.
    """

    channels_last = True

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_features = encoder.num_features

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        b, t = clip.shape[:2]
        x = clip.reshape(b * t, *clip.shape[2:])  # (B*T, C, H, W)
        feats = self.encoder(_memory_format(x, self.channels_last))  # (B*T, F)
        return feats.reshape(b, t, -1)  # (B, T, F)


class CNNLSTM(nn.Module):
    """Encoder per frame -> LSTM stack over the 30 slots -> head. Forward: (clip, mask) -> (B,)."""

    input_key = "clip"

    def __init__(self, backbone: str = "tiny", lstm_hidden: int = 128, lstm_layers: int = 1,
                 lstm_sizes: list[int] | None = None, bidirectional: bool = False,
                 dense: int = 0, dropout: float = 0.2, readout: str = "last",
                 pretrained: bool = False, weights: str | None = None) -> None:
        super().__init__()
        if readout not in ("last", "mean"):
            raise ValueError(f"readout must be 'last' or 'mean', not {readout!r}")
        self.readout = readout
        self.bidirectional = bidirectional
        self.encoder = TimeDistributed(create_backbone(backbone, pretrained, weights))
        sizes = list(lstm_sizes) if lstm_sizes else [lstm_hidden] * lstm_layers
        dirs = 2 if bidirectional else 1
        self.lstms = nn.ModuleList()
        width = self.encoder.num_features
        for size in sizes:
            self.lstms.append(nn.LSTM(width, size, batch_first=True, bidirectional=bidirectional))
            width = size * dirs
        head: list[nn.Module] = [nn.Dropout(dropout)]
        if dense:
            head += [nn.Linear(width, dense), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = dense
        head.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*head)

    def forward(self, clip: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t = clip.shape[:2]
        if mask is None:
            mask = torch.ones(b, t, device=clip.device)
        return self.classify(self.encoder(clip), mask)  # (B,)

    def classify(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-frame features (B, T, F) and mask (B, T) -> logits (B,).

        Split from ``forward`` so that scoring can encode a clip once and read the LSTM's running
        verdict over prefixes of the clip (mask the later slots).
        """
        m = mask.to(feats.dtype)
        x = feats * m.unsqueeze(-1)  # (B, T, F), padded slots zeroed
        for lstm in self.lstms:
            x, _ = lstm(x)  # (B, T, H*dirs)
        x = self._readout(x, m)  # (B, H*dirs)
        return self.head(x).squeeze(-1)  # (B,)

    def _readout(self, out: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """(B, T, D) LSTM outputs -> (B, D), ignoring masked slots."""
        if self.readout == "mean":
            w = m.to(out.dtype).unsqueeze(-1)  # (B, T, 1)
            return (out * w).sum(1) / w.sum(1).clamp_min(1.0)
        t = out.shape[1]
        idx = torch.arange(t, device=out.device).expand_as(m)  # (B, T)
        valid = m > 0
        last = torch.where(valid, idx, torch.zeros_like(idx)).amax(1)  # (B,) last valid slot
        first = torch.where(valid, idx, torch.full_like(idx, t - 1)).amin(1)  # (B,)
        rows = torch.arange(out.shape[0], device=out.device)
        if not self.bidirectional:
            return out[rows, last]  # (B, D)
        half = out.shape[-1] // 2
        return torch.cat([out[rows, last, :half], out[rows, first, half:]], dim=-1)  # (B, D)


TTA_MODES = ("none", "flip")
_NO_TTA = threading.local()


@contextlib.contextmanager
def no_tta() -> Iterator[None]:
    """In this thread, frame models predict on the image as given (Grad-CAM explains one view)."""
    before = getattr(_NO_TTA, "on", False)
    _NO_TTA.on = True
    try:
        yield
    finally:
        _NO_TTA.on = before


class FrameModel(nn.Module):
    """Encoder on one image -> head. Forward: image (B, C, H, W) -> (B,).

    ``tta="flip"``: outside training, the logit is the mean of the image's and its mirror
    image's logits (one encoder pass over both); training steps see the image as given.
    """

    input_key = "image"
    channels_last = True

    def __init__(self, backbone: str = "tiny", dropout: float = 0.2, pretrained: bool = False,
                 weights: str | None = None, tta: str = "none") -> None:
        super().__init__()
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
        self.tta = tta
        self.encoder = create_backbone(backbone, pretrained, weights)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.encoder.num_features, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b = image.shape[0]
        flip = self.tta == "flip" and not self.training and not getattr(_NO_TTA, "on", False)
        if flip:
            image = torch.cat([image, image.flip(-1)])  # (2B, C, H, W): the crops, then mirrored
        feats = self.encoder(_memory_format(image, self.channels_last))  # (B, F) or (2B, F)
        logits = self.head(feats).squeeze(-1)  # (B,) or (2B,)
        return logits.reshape(2, b).mean(0) if flip else logits  # (B,)


class FrameMean(nn.Module):
    """A frame model on every valid frame; logit of the masked mean of per-frame probabilities.

    Costs no training of its own: wrap a trained ``frame`` model (``from_frame``).
    """

    input_key = "clip"

    def __init__(self, backbone: str = "tiny", dropout: float = 0.2, pretrained: bool = False,
                 weights: str | None = None, tta: str = "none") -> None:
        super().__init__()
        self.frame = FrameModel(backbone, dropout, pretrained, weights, tta)

    @classmethod
    def from_frame(cls, frame_model: nn.Module) -> FrameMean:
        """Wrap an existing (trained) image model (any ``input_key == "image"`` model: the
        registered ``frame`` or another); shares its parameters."""
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        obj.frame = frame_model
        obj.model_name = "frame_mean"
        obj.model_kwargs = dict(getattr(frame_model, "model_kwargs", {}))
        return obj

    def forward(self, clip: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t = clip.shape[:2]
        logits = self.frame(clip.reshape(b * t, *clip.shape[2:]))  # (B*T,)
        probs = torch.sigmoid(logits.float()).reshape(b, t)  # (B, T)
        return torch.logit(frame_mean_p(probs, mask))  # (B,)


def _cnn_lstm_kwargs(cfg: Any) -> dict[str, Any]:
    """``TrainConfig`` -> ``cnn_lstm`` keyword arguments (``lstm_sizes`` only when given)."""
    kw: dict[str, Any] = {"backbone": cfg.backbone, "lstm_hidden": cfg.lstm_hidden,
                          "lstm_layers": cfg.lstm_layers, "bidirectional": cfg.bidirectional,
                          "dense": cfg.dense, "dropout": cfg.dropout, "readout": cfg.readout}
    if cfg.lstm_sizes:
        kw["lstm_sizes"] = list(cfg.lstm_sizes)
    return kw


@register_model("cnn_lstm", input_key="clip", presets=True, kwargs_from=_cnn_lstm_kwargs,
                backbone=lambda m: m.encoder.encoder)
def cnn_lstm(**kwargs) -> nn.Module:
    """CNN per frame -> LSTM(s) -> (dense) -> head; the video model."""
    return CNNLSTM(**kwargs)


def _frame_kwargs(cfg: Any) -> dict[str, Any]:
    """``TrainConfig`` -> ``frame`` keyword arguments (``tta`` only when asked for, so that
    checkpoints without it rebuild as before)."""
    kw: dict[str, Any] = {"backbone": cfg.backbone, "dropout": cfg.dropout}
    if getattr(cfg, "tta", "none") != "none":
        kw["tta"] = cfg.tta
    return kw


@register_model("frame", input_key="image", derived=("frame_mean",), scores_as="frame_mean",
                feature_cache=True, kwargs_from=_frame_kwargs)
def frame(**kwargs) -> nn.Module:
    """Single-frame baseline (the middle slot in training)."""
    return FrameModel(**kwargs)


@register_model("frame_mean", input_key="clip", wraps="image", from_base=FrameMean.from_frame,
                per_frame=True, trainable=False, backbone=lambda m: m.frame.encoder)
def frame_mean(**kwargs) -> nn.Module:
    """Single-frame model on all frames, probabilities averaged (from a trained ``frame``)."""
    return FrameMean(**kwargs)
