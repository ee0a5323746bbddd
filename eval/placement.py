"""Prefix placement: the order-preserving positions in stage k's target that best hold stage k-1's tokens.

A cascade's stage sequences are nested: stage k-1's m tokens are an order-preserving subsequence of stage k's
L tokens. A re-predicting stage k samples all L tokens after the clean prefix x_{k-1} and is free to drop prefix
tokens. A placing sampler (eval.samplers.PLACING_SAMPLERS) first places them, with the model's own scores

    S[r, i] = log p_theta(x_0^i = x_{k-1, r} | prefix clean, target all masked),    r < m, i < L

(one network call, eval.samplers.place_prefix), at the placement j_0 < j_1 < ... < j_{m-1} in [0, L) that
maximises sum_r S[r, j_r] (best_placement), then samples the other L - m positions around them. This is
constrained decoding (a max-product choice of positions, then a sampler conditioned on it), not a draw from
the model's law of stage k: the cascade's bounds (validation NELBO) say nothing about such samples.
"""

from __future__ import annotations

import torch

FLOOR = -1e30  # a log-probability of -inf (p underflowed to 0) counts as this: every placement has a finite score


def best_placement(scores: torch.Tensor) -> torch.Tensor:
    """The order-preserving placement of m tokens in L >= m positions with the largest total score:
    ``scores [B, m, L]`` (S[r, i]: token r at position i) -> positions Long[B, m], strictly increasing per row.

    A monotone alignment by dynamic programming, in suffix form: E_r(i) is the best total of placing tokens
    r..m-1 in positions i..L-1,

        E_m(i) = 0,   E_r(L) = -inf for r < m (no room left),
        E_r(i) = max( E_r(i + 1),  S[r, i] + E_{r+1}(i + 1) )          skip position i, or put token r there
               = max_{i' >= i} A_r(i'),    A_r(i) = S[r, i] + E_{r+1}(i + 1)

    so each E_r is a running maximum of A_r from the right (E_r(i) = -inf where L - i < m - r: the -inf of
    E_r(L) carries it). The best total is E_0(0). Backtrace, left to right, j_{-1} = -1:

        j_r = the leftmost argmax of A_r(i) over j_{r-1} < i < L

    which takes position i for token r whenever taking it is optimal: among optimal placements, the
    lexicographically smallest (j_0 as small as possible, then j_1, ...). Ties go left, deterministically
    (exact where the sums are, e.g. integer-valued scores). O(m L) time and memory, m steps of vector
    operations over the batch, in float64; a score of -inf counts as FLOOR.
    """
    if scores.dim() != 3:
        raise ValueError(f"scores must be [batch, m tokens, L positions], got shape {tuple(scores.shape)}")
    batch, m, length = scores.shape
    if m > length:
        raise ValueError(f"cannot place {m} tokens in order in {length} positions (need m <= L)")
    s = _floored(scores)
    gains = torch.empty_like(s)  # A_r(i)
    following = s.new_zeros(batch, length + 1)  # E_{r+1}(i), i = 0..L; starts as E_m = 0
    no_room = s.new_full((batch, 1), float("-inf"))
    for r in reversed(range(m)):
        gains[:, r] = s[:, r] + following[:, 1:]
        best = gains[:, r].flip(-1).cummax(-1).values.flip(-1)  # E_r(i) = max_{i' >= i} A_r(i')
        following = torch.cat([best, no_room], dim=-1)
    positions = torch.empty(batch, m, dtype=torch.long, device=s.device)
    index = torch.arange(length, device=s.device)
    after = torch.full((batch, 1), -1, dtype=torch.long, device=s.device)
    for r in range(m):
        allowed = gains[:, r].masked_fill(index <= after, float("-inf"))
        after = allowed.argmax(-1, keepdim=True)  # argmax: the first of equal maxima, the leftmost
        positions[:, r] = after[:, 0]
    return positions


def _floored(scores: torch.Tensor) -> torch.Tensor:
    """The scores in float64 with -inf raised to FLOOR; a NaN (a broken network) is an error, not a score."""
    if torch.isnan(scores).any():
        raise ValueError("placement scores contain NaN: the network's log-probabilities are broken")
    return scores.to(torch.float64).clamp_min(FLOOR)
