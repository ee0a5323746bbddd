"""Noise schedules of the absorbing-state (masking) diffusion.

A schedule gives the total noise sigma_bar(t) for t in [0, 1] and its rate d sigma_bar / dt. Under the
absorbing graph a token is replaced by the mask at time t with probability

    move(t) = 1 - exp(-sigma_bar(t)),

so the schedules below are written as "how fast the mask probability rises". Every objective only needs
`total(t)` and `rate(t)`; the MDLM weight sigma'(t) / expm1(sigma(t)) and the SEDD weight sigma'(t) both come
from them.
"""

from __future__ import annotations

import math

import torch


class LogLinearNoise:
    """sigma_bar(t) = -log(1 - (1 - eps) t),   sigma'(t) = (1 - eps) / (1 - (1 - eps) t).

    move(t) = (1 - eps) t: the mask probability rises linearly from 0 to 1 - eps (SEDD / MDLM default),
    and the MDLM weight sigma'/expm1(sigma) is exactly 1/t.
    """

    def __init__(self, eps: float = 1e-3):
        self.eps = float(eps)

    def total(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.log1p(-(1 - self.eps) * t)

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        return (1 - self.eps) / (1 - (1 - self.eps) * t)

    def time_of_move(self, share: torch.Tensor) -> torch.Tensor:
        """The t with move(t) = share:  t = share / (1 - eps)  (unclamped)."""
        return share / (1 - self.eps)


class GeometricNoise:
    """sigma_bar(t) = sigma_min^(1-t) sigma_max^t,   sigma'(t) = sigma_bar(t) (log sigma_max - log sigma_min)."""

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"geometric noise needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def total(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min ** (1 - t) * self.sigma_max**t

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        return self.total(t) * (math.log(self.sigma_max) - math.log(self.sigma_min))

    def time_of_move(self, share: torch.Tensor) -> torch.Tensor:
        """The t with move(t) = 1 - exp(-sigma_bar(t)) = share (unclamped):
        sigma = -log(1 - share),  t = log(sigma / sigma_min) / log(sigma_max / sigma_min)."""
        sigma = -torch.log1p(-share.clamp(max=1 - 1e-16))
        log_min, log_max = math.log(self.sigma_min), math.log(self.sigma_max)
        return (torch.log(sigma) - log_min) / (log_max - log_min)


class CosineNoise:
    """sigma_bar(t) = -log(eps + (1 - eps) cos(pi t / 2)),
    sigma'(t) = (pi / 2) (1 - eps) sin(pi t / 2) / (eps + (1 - eps) cos(pi t / 2)).

    move(t) = (1 - eps)(1 - cos(pi t / 2)): few tokens masked early, fast masking late (MDLM's cosine).
    """

    def __init__(self, eps: float = 1e-3):
        self.eps = float(eps)

    def total(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.log(self.eps + (1 - self.eps) * torch.cos(t * math.pi / 2))

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        cos = (1 - self.eps) * torch.cos(t * math.pi / 2)
        sin = (1 - self.eps) * torch.sin(t * math.pi / 2)
        return (math.pi / 2) * sin / (cos + self.eps)

    def time_of_move(self, share: torch.Tensor) -> torch.Tensor:
        """The t with move(t) = share:  t = (2 / pi) arccos(1 - share / (1 - eps))  (in [0, 1])."""
        return (2 / math.pi) * torch.arccos((1 - share / (1 - self.eps)).clamp(-1.0, 1.0))


SCHEDULES = {"loglinear": LogLinearNoise, "geometric": GeometricNoise, "cosine": CosineNoise}


def get_noise(spec: dict):
    """Build a schedule from its config, e.g. {"type": "loglinear", "eps": 1e-3}."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in SCHEDULES:
        raise ValueError(f"noise type must be one of {sorted(SCHEDULES)}, got {kind!r}")
    try:
        return SCHEDULES[kind](**spec)
    except TypeError as err:
        raise ValueError(f"bad keys for noise {kind!r}: {sorted(spec)} ({err})") from None


SAMPLING_EPS = 1e-3  # the smallest training time: sample_times draws t ~ U[SAMPLING_EPS, 1]


def sample_times(
    n: int, generator: torch.Generator | None = None, antithetic: bool = True, sampling_eps: float = SAMPLING_EPS
) -> torch.Tensor:
    """Diffusion times t in [sampling_eps, 1] for a batch of n.

    Antithetic (MDLM's low-discrepancy sampler): one uniform u, then t_i = (u / n + i / n) mod 1, so the
    batch covers [0, 1) evenly and the variance of the batch-mean loss drops. t = 0 is avoided because the
    weight sigma'/expm1(sigma) diverges there.
    """
    u = torch.rand(n if not antithetic else 1, generator=generator)
    if antithetic:
        u = (u / n + torch.arange(n) / n) % 1
    return (1 - sampling_eps) * u + sampling_eps
