"""Procedurally generated preference tasks (offline, seeded).

* :func:`sorting_preferences` - "sort the digits": chosen = the sorted string, rejected = another
  permutation of the same digits. Learnable by a tiny model (a real structural rule), so held-out
  preference accuracy rising above 50% is a genuine signal. The default ``python train.py`` task.
* :func:`mallows_bandit` - the MallowsPO synthetic bandit: contexts with a central ranking over
  arms and a per-context Mallows-Kendall dispersion ``phi``; pairs are drawn from the exact
  pairwise marginal (so noisy contexts contain many flipped pairs).
"""

from __future__ import annotations

import math
import random
from typing import Any


def sorting_preferences(
    *,
    seed: int = 0,
    num_examples: int = 2000,
    min_len: int = 3,
    max_len: int = 6,
    alphabet: str = "0123456789",
    rejected: str = "swap",
) -> list[dict[str, Any]]:
    """Pairs ``("sort: 3142 =", "1234", "<a non-sorted permutation>")``.

    ``rejected="shuffle"`` draws a random permutation (easy); ``"swap"`` swaps two unequal digits of
    the sorted answer (a near miss: harder, the pair differs in two positions only).
    """
    if not 2 <= min_len <= max_len:
        raise ValueError(f"need 2 <= min_len <= max_len, got {min_len}, {max_len}")
    if rejected not in ("shuffle", "swap"):
        raise ValueError(f"rejected={rejected!r}; valid: shuffle, swap")
    rng = random.Random(seed)
    rows = []
    while len(rows) < num_examples:
        n = rng.randint(min_len, max_len)
        digits = [rng.choice(alphabet) for _ in range(n)]
        chosen = "".join(sorted(digits))
        perm = sorted(digits)
        if rejected == "shuffle":
            for _ in range(10):
                rng.shuffle(perm)
                if perm != sorted(digits):
                    break
        else:
            i, j = sorted(rng.sample(range(n), 2))
            perm[i], perm[j] = perm[j], perm[i]
        bad = "".join(perm)
        if bad == chosen:  # equal digits: no pair
            continue
        rows.append({"prompt": f"sort: {''.join(digits)} =", "chosen": chosen, "rejected": bad})
    return rows


def kendall_pairwise_win(s: int, phi: float) -> float:
    """P(the item ranked ``s`` places higher wins) under Mallows-Kendall: exact, independent of n."""
    if s <= 0:
        raise ValueError("s must be a positive rank gap")
    return (s + 1) / (1 - phi ** (s + 1)) - s / (1 - phi**s)


def mallows_bandit(
    *,
    seed: int = 0,
    num_contexts: int = 8,
    num_arms: int = 5,
    pairs_per_context: int = 64,
    phis: tuple[float, ...] = (0.1, 0.9),
    arm_names: str = "abcdefghij",
) -> list[dict[str, Any]]:
    """The MallowsPO synthetic bandit: preference pairs with per-context dispersion.

    Context ``c`` has dispersion ``phis[c % len(phis)]`` and central ranking ``arm_names[0] >
    arm_names[1] > ...`` (arm ``a`` is best everywhere, so the true reward of arm ``k`` is
    ``num_arms - 1 - k``). Each pair draws two distinct arms and orders them by the exact
    Kendall pairwise marginal. Rows carry ``dispersion = -log phi`` (the *true* neg-log dispersion)
    and ``context`` / ``phi`` for analysis.
    """
    if num_arms > len(arm_names) or num_arms < 2:
        raise ValueError(f"num_arms must lie in [2, {len(arm_names)}]")
    if not all(0 < p < 1 for p in phis):
        raise ValueError(f"every phi must lie in (0, 1), got {phis}")
    rng = random.Random(seed)
    rows = []
    for c in range(num_contexts):
        phi = phis[c % len(phis)]
        for _ in range(pairs_per_context):
            i, j = sorted(rng.sample(range(num_arms), 2))  # i is ranked higher (better)
            win = rng.random() < kendall_pairwise_win(j - i, phi)
            chosen, rejected = (i, j) if win else (j, i)
            rows.append(
                {
                    "prompt": f"context {c}:",
                    "chosen": arm_names[chosen],
                    "rejected": arm_names[rejected],
                    "dispersion": -math.log(phi),
                    "context": c,
                    "phi": phi,
                }
            )
    return rows
