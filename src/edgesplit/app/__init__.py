"""The application layer: a run and a profile as jobs of typed phases (:mod:`.job`), the
Python API (:mod:`.api`, re-exported by :mod:`edgesplit`) and its results (:mod:`.results`).

``edgesplit run`` goes :func:`~.job.prepare` -> :func:`~.job.bootstrap` ->
:func:`~.job.choose_plan` -> :func:`~.job.execute` -> :func:`~.job.summarise_run` ->
:func:`~.job.write_run`; nothing below this package imports it.
"""
