"""Built-in plugin: ``piecewise_constant``, as ``optax.piecewise_constant_schedule``."""

from __future__ import annotations

from collections.abc import Mapping

from bnsgd_numba.hookspecs import Register, hookimpl
from bnsgd_numba.schedulers.base import Scheduler, resolve_alias


class PiecewiseConstant(Scheduler):
    """Multiply the learning rate by ``scale`` from each ``boundary`` step on.

    Parameters
    ----------
    init_value : float, optional
        Learning rate at step 0; ``base_lr`` is another name for it (give
        one of the two).
    boundaries_and_scales : mapping of int to float, optional
        ``{boundary: scale}``; from step ``boundary`` on the learning rate
        is multiplied by ``scale`` (>= 0). None or empty: constant.
    base_lr : float, optional
        Same as ``init_value``.

    Notes
    -----
    Scales compound, in increasing order of boundary, as in Optax.
    """

    def __init__(
        self,
        *,
        init_value: float | None = None,
        boundaries_and_scales: Mapping[int, float] | None = None,
        base_lr: float | None = None,
    ) -> None:
        init = resolve_alias(base_lr, "init_value", init_value)
        pairs = sorted((int(b), float(s)) for b, s in (boundaries_and_scales or {}).items())
        if any(scale < 0 for _, scale in pairs):
            raise ValueError("boundaries_and_scales: every scale must be >= 0")
        self.boundaries_and_scales = dict(pairs)
        super().__init__(base_lr=init)

    def lr_at(self, step: int) -> float:
        value = self.base_lr
        for boundary, scale in self.boundaries_and_scales.items():
            if step >= boundary:
                value *= scale
        return value


@hookimpl
def bnsgd_register_schedulers(register: Register) -> None:
    """Register ``piecewise_constant``."""
    register(
        "piecewise_constant",
        PiecewiseConstant,
        examples=[{"boundaries_and_scales": {50: 0.5, 150: 0.1}}, {}],
    )
