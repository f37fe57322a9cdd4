"""Image coders: a small autoencoder per image variable, fitted on the study's real images.

Its standardised code describes an image to label mechanisms, kernel losses and critics of label
stages (the paper's trick, design.md §7), and latent image mechanisms
(:class:`mdcm.nets.LatentMixture`) sample in its code space and decode with its frozen decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .nets import MLP, ConvImageGenerator, MLPImageGenerator, act

__all__ = ["ImageCoder"]


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
        # MLP up to mlp_max values: on CPU a conv coder of 3x28x28 images fitted ~10x slower
        # (273 s vs 28 s for 2000 steps) for a reconstruction MSE of 0.0098 vs 0.0134
        self.conv = c * h * w > mlp_max
        if self.conv:
            layers: list[nn.Module] = []
            ch, size, in_ch = 16, max(h, w), c
            while size > 8:
                layers += [nn.Conv2d(in_ch, ch, 4, stride=2, padding=1), act()]
                in_ch, ch, size = ch, min(ch * 2, 64), (size + 1) // 2
            self.enc_body = nn.Sequential(*layers, nn.Flatten())
            with torch.no_grad():
                flat = self.enc_body(torch.zeros(1, c, h, w)).shape[1]
            self.encoder = nn.Sequential(
                self.enc_body, nn.Linear(flat, hidden), act(), nn.Linear(hidden, code_dim)
            )
            self.decoder: nn.Module = ConvImageGenerator(0, code_dim, self.shape, 16)
        else:
            self.encoder = nn.Sequential(nn.Flatten(), MLP(c * h * w, code_dim, hidden, 1))
            self.decoder = MLPImageGenerator(0, code_dim, self.shape, hidden)
        self.register_buffer("mean", torch.zeros(code_dim))
        self.register_buffer("std", torch.ones(code_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised code ``(n, code_dim)``; differentiable in ``x``."""
        return (self.encoder(x) - self.mean) / self.std

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
    ) -> float | None:
        """Fit the autoencoder (MSE) on real images; returns the final reconstruction MSE, or None
        when ``should_stop()`` (polled every step) ended the fit (the coder is then unfitted).
        ``on_progress(step, mse)`` is called every ``report_every`` steps."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        n = images.shape[0]
        loss = torch.zeros(())
        was_training = self.training
        self.train()
        for step in range(steps):
            if should_stop is not None and should_stop():
                self.train(was_training)
                return None
            idx = torch.randint(0, n, (min(batch, n),), generator=gen).to(images.device)
            x = images[idx]
            loss = F.mse_loss(self.decode_raw(self.encoder(x)), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if on_progress is not None and (step + 1) % report_every == 0:
                on_progress(step + 1, float(loss.detach()))
        with torch.no_grad():
            codes = torch.cat([self.encoder(images[i : i + 1024]) for i in range(0, n, 1024)])
            self.mean.copy_(codes.mean(0))
            self.std.copy_(codes.std(0).clamp_min(1e-3))
            self.fitted.fill_(True)
        self.train(was_training)
        for p in self.parameters():
            p.requires_grad_(False)
        return float(loss.detach())
