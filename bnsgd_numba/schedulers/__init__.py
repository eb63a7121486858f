"""Learning-rate schedulers: the :class:`Scheduler` base and the built-in plugin modules.

Create them by name with :func:`bnsgd_numba.create_scheduler`; the built-in
modules (``decay``, ``cosine``, ``piecewise``, ``cyclic``, ``plateau``,
``composite``) are ordinary plugins registered through
``bnsgd_register_schedulers``.
"""
