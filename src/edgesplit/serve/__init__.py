"""``edgesplit serve``: a planned pipeline kept warm behind an HTTP API (issue #21).

- :mod:`~edgesplit.serve.batcher`: admission (a bounded queue) and dynamic batching of the
  images of many requests into micro-batches (``max_batch`` or ``max_wait_s``, whichever first);
- :mod:`~edgesplit.serve.images`: uploads to model inputs, with limits that name the problem;
- :mod:`~edgesplit.serve.session`: the long-lived run (the coordinator's own loop, fed by the
  batcher: window, replay after a worker loss and adaptive re-planning work as in ``run``);
- :mod:`~edgesplit.serve.app`: the ASGI app (FastAPI): ``/v1/classify``, ``/v1/cluster``,
  ``/metrics`` and the live page ``/``;
- :mod:`~edgesplit.serve.loadgen`: open-loop (Poisson) and closed-loop load, QPS sweeps.
"""
