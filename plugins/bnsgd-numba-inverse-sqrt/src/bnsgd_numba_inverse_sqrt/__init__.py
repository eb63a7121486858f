"""bnsgd-numba plugin: the inverse-square-root schedule of the Transformer.

Installed, it registers the scheduler ``inverse_sqrt`` through the
``bnsgd_numba`` entry point; nothing needs to import this module::

    import bnsgd_numba

    sched = bnsgd_numba.create_scheduler("inverse_sqrt", base_lr=1e-3, warmup_steps=4000)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

from bnsgd_numba import Scheduler, hookimpl

__version__ = "0.1.0"


class InverseSqrt(Scheduler):
    """Linear warmup to ``base_lr``, then decay as ``1 / sqrt(step)``.

    Parameters
    ----------
    base_lr : float, optional
        Peak learning rate, reached at ``warmup_steps``; left out, the
        optimizer's ``lr`` when the schedule is bound.
    warmup_steps : int, default 4000
        Steps of the linear warmup, >= 1.
    warmup_init_lr : float, default 0.0
        Learning rate at step 0, finite and >= 0.

    Notes
    -----
    ``lr(t) = warmup_init_lr + (base_lr - warmup_init_lr) * t / warmup_steps``
    for ``t < warmup_steps``, then ``base_lr * sqrt(warmup_steps / t)``.
    Vaswani et al., "Attention Is All You Need", 2017, eq. 3, is the case
    ``warmup_init_lr = 0`` and ``base_lr = d_model ** -0.5 * warmup_steps ** -0.5``;
    fairseq calls it ``inverse_sqrt``.
    """

    def __init__(
        self, *, base_lr: float | None = None, warmup_steps: int = 4000, warmup_init_lr: float = 0.0
    ) -> None:
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral):
            raise TypeError(f"warmup_steps must be an integer, got {warmup_steps!r}")
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be an integer >= 1, got {warmup_steps!r}")
        if isinstance(warmup_init_lr, bool) or not isinstance(warmup_init_lr, numbers.Real):
            raise TypeError(f"warmup_init_lr must be a real number, got {warmup_init_lr!r}")
        if not math.isfinite(warmup_init_lr) or warmup_init_lr < 0:
            raise ValueError(f"warmup_init_lr must be finite and >= 0, got {warmup_init_lr!r}")
        self.warmup_steps = int(warmup_steps)
        self.warmup_init_lr = float(warmup_init_lr)
        super().__init__(base_lr=base_lr)

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            fraction = step / self.warmup_steps
            return self.warmup_init_lr + (self.base_lr - self.warmup_init_lr) * fraction
        return self.base_lr * math.sqrt(self.warmup_steps / step)


@hookimpl
def bnsgd_register_schedulers(register: Callable[..., None]) -> None:
    """Register ``inverse_sqrt``, with examples the conformance kit runs."""
    register(
        "inverse_sqrt",
        InverseSqrt,
        examples=[
            {"warmup_steps": 40},
            {"warmup_steps": 1},
            {"warmup_steps": 100, "warmup_init_lr": 1e-4, "base_lr": 5e-3},
        ],
    )
