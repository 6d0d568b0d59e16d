"""The application layer: a run and a profile as jobs of typed phases (:mod:`.job`); the
Python API (``edgesplit._api``, re-exported by :mod:`edgesplit`) and ``edgesplit serve`` sit
above it.

``edgesplit run`` goes :func:`~.job.prepare` -> :func:`~.job.bootstrap` ->
:func:`~.job.choose_plan` -> :func:`~.job.install` -> :func:`~.job.measure_overheads` ->
:func:`~.job.execute` -> :func:`~.job.summarise_run` -> :func:`~.job.write_run`;
:mod:`.staging` picks the stages, :mod:`.execution` the engine and precision, :mod:`.pilot`
measures the costs the prediction needs. Nothing below this package imports it.
"""
