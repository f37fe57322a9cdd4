"""Image coders: a small autoencoder per image variable, fitted on the study's real images.

Its standardised code describes an image to label mechanisms, kernel losses and critics of label
stages (the paper's trick, design.md §7), and latent image mechanisms
(:class:`mdcm.nets.LatentMixture`) sample in its code space and decode with its frozen decoder.

Two bodies, chosen by the image's size (``mlp_max`` values, ``ModelConfig.coder_mlp_max``):

* tiny images: an MLP encoder and decoder (fastest on a CPU up to a few thousand values);
* larger ones: a strided conv encoder and a transposed-conv decoder whose widths shrink as the
  resolution grows (:func:`conv_widths`: 8 channels at 64 px and above, up to 64 at 4-8 px), so
  that one step costs about the same at 64, 128 and 256 px instead of growing with the pixel
  count times a fixed width. bench/image_coders.py chose it (fit speed, reconstruction error and
  what a probe reads off the reconstructions).

Images may be given as float in [-1, 1] or as uint8 pixels ``0 … 255`` (memory-light storage);
:meth:`ImageCoder.fit` converts one batch at a time.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .nets import MLP, MLPImageGenerator, act

__all__ = ["ImageCoder", "as_float_images", "as_uint8_images", "autocast", "conv_widths"]

#: channels x resolution budget of the conv coder (width = BUDGET // side, clamped to 8 … 64)
WIDTH_BUDGET = 512
#: the conv coder's smallest feature map side
MIN_SIDE = 4


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on a CUDA device (matrix products and convolutions in bfloat16, reductions
    and losses in float32; no loss scaling needed with bf16), a no-op elsewhere: on a CPU the
    networks here are small and autocast only adds casts."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def as_float_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels ``0 … 255`` to float ``[-1, 1]``; float images unchanged."""
    if x.dtype == torch.uint8:
        return x.float().div_(127.5).sub_(1.0)
    return x


def _width(side: int) -> int:
    return max(8, min(64, WIDTH_BUDGET // side))


def as_uint8_images(x: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] (clamped) to uint8 pixels on the PNG grid; uint8 unchanged."""
    if x.dtype == torch.uint8:
        return x
    return (x.detach().clamp(-1.0, 1.0) + 1.0).mul_(127.5).round_().to(torch.uint8)


def conv_widths(side: int) -> list[tuple[int, int]]:
    """(side, channels) of the conv coder's feature maps, from the first strided conv's output
    down to at most :data:`MIN_SIDE` px: each halving of the side doubles the width (up to 64)."""
    out = []
    s = side
    while s > MIN_SIDE:
        s = (s + 1) // 2
        out.append((s, _width(s)))
    return out


class _ConvEncoder(nn.Module):
    def __init__(self, shape: Sequence[int], code_dim: int, hidden: int) -> None:
        super().__init__()
        c, h, w = shape
        layers: list[nn.Module] = []
        in_ch = c
        for _, ch in conv_widths(max(h, w)):
            layers += [nn.Conv2d(in_ch, ch, 4, stride=2, padding=1), act()]
            in_ch = ch
        self.body = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = self.body(torch.zeros(1, c, h, w)).shape[1]
        self.head = nn.Sequential(nn.Linear(flat, hidden), act(), nn.Linear(hidden, code_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class _ConvDecoder(nn.Module):
    """Code -> MLP -> smallest feature map -> (4x4 transposed conv, stride 2) per level -> a
    linear 3x3 conv to the image channels at full resolution -> centre crop."""

    def __init__(self, shape: Sequence[int], code_dim: int, hidden: int) -> None:
        super().__init__()
        c, h, w = (int(s) for s in shape)
        self.shape = (c, h, w)
        levels = conv_widths(max(h, w))
        n = len(levels)
        self.h0, self.w0 = math.ceil(h / 2**n), math.ceil(w / 2**n)
        chans = [ch for _, ch in reversed(levels)]  # smallest map first
        self.c0 = chans[0]
        self.stem = nn.Sequential(
            nn.Linear(code_dim, hidden),
            act(),
            nn.Linear(hidden, self.c0 * self.h0 * self.w0),
            act(),
        )
        chans.append(_width(max(h, w)))  # full resolution
        ups: list[nn.Module] = []
        for i in range(n):
            ups += [nn.ConvTranspose2d(chans[i], chans[i + 1], 4, stride=2, padding=1), act()]
        self.ups = nn.Sequential(*ups)
        self.out = nn.Conv2d(chans[-1], c, 3, padding=1)

    def forward(self, cond: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        x = self.stem(code).view(-1, self.c0, self.h0, self.w0)
        x = self.out(self.ups(x))
        c, h, w = self.shape
        top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
        return x[:, :, top : top + h, left : left + w]


class ImageCoder(nn.Module):
    """A small autoencoder fitted on the study's real images; its standardised code describes an
    image to label mechanisms, MMD losses and critics of label stages (design.md §7).

    ``fitted`` is a buffer so a saved model remembers whether the coder was trained.
    """

    def __init__(
        self, shape: Sequence[int], code_dim: int, hidden: int = 256, mlp_max: int = 4096
    ) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        c, h, w = self.shape
        self.conv = c * h * w > mlp_max
        if self.conv:
            self.encoder: nn.Module = _ConvEncoder(self.shape, code_dim, hidden)
            self.decoder: nn.Module = _ConvDecoder(self.shape, code_dim, hidden)
        else:
            self.encoder = nn.Sequential(nn.Flatten(), MLP(c * h * w, code_dim, hidden, 1))
            self.decoder = MLPImageGenerator(0, code_dim, self.shape, hidden)
        self.register_buffer("mean", torch.zeros(code_dim))
        self.register_buffer("std", torch.ones(code_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised code ``(n, code_dim)``; differentiable in ``x`` (float or uint8)."""
        return (self.encoder(as_float_images(x)) - self.mean) / self.std

    def decode_raw(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(code.new_zeros(code.shape[0], 0), code)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Image from a standardised code (the inverse scale of :meth:`encode`); differentiable."""
        return self.decode_raw(code * self.std + self.mean)

    def fit(
        self,
        images: torch.Tensor,
        steps: int = 600,
        batch: int = 128,
        lr: float = 1e-3,
        seed: int = 0,
        *,
        on_progress: Callable[[int, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        report_every: int = 50,
        amp: bool = True,
    ) -> float | None:
        """Fit the autoencoder (MSE) on real images (float or uint8, on the training device);
        returns the final reconstruction MSE, or None when ``should_stop()`` (polled every step
        and between the chunks of the final pass) ended the fit (the coder is then unfitted).
        ``on_progress(step, mse)`` is called every ``report_every`` steps. With ``amp`` on a
        CUDA device the forward pass runs under bf16 autocast (:func:`autocast`); the loss, the
        weights and the code statistics stay float32."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        n = images.shape[0]
        loss = torch.zeros(())
        was_training = self.training
        self.train()

        def stopped() -> bool:
            if should_stop is not None and should_stop():
                self.train(was_training)
                return True
            return False

        for step in range(steps):
            if stopped():
                return None
            idx = torch.randint(0, n, (min(batch, n),), generator=gen).to(images.device)
            x = as_float_images(images[idx])
            with autocast(x.device, amp):
                rec = self.decode_raw(self.encoder(x))
            loss = F.mse_loss(rec.float(), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_progress is not None and (step + 1) % report_every == 0:
                on_progress(step + 1, float(loss.detach()))
        codes = []
        with torch.no_grad():
            for i in range(0, n, 512):
                if i and stopped():  # between chunks (large studies take seconds here)
                    return None
                codes.append(self.encoder(as_float_images(images[i : i + 512])))
            codes_t = torch.cat(codes)
            self.mean.copy_(codes_t.mean(0))
            self.std.copy_(codes_t.std(0).clamp_min(1e-3))
            self.fitted.fill_(True)
        self.train(was_training)
        for p in self.parameters():
            p.requires_grad_(False)
        return float(loss.detach())
