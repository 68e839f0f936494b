"""``edgeloop demo``: the whole loop on one machine, on the real components, with a live view and a report.

Where things are, in the order a run meets them:

* :mod:`deploy.demo.cli` -- the command line (``edgeloop demo --help``);
* :mod:`deploy.demo.plan` -- options, scenarios, the drift timeline and every setting derived from them;
* :mod:`deploy.demo.app` -- :class:`~deploy.demo.app.DemoApp`: starts the broker, bootstrap, controller,
  rollout feeder (:mod:`deploy.rollout_feeder`, product code), trainer, monitor, frozen control and cameras
  one phase at a time, streams, and stops them in reverse order;
* :mod:`deploy.demo.bootstrap`, :mod:`deploy.demo.cameras`, :mod:`deploy.demo.monitor`,
  :mod:`deploy.demo.frozen_control` -- one service each;
* :mod:`deploy.demo.live` -- what a person sees while it runs; :mod:`deploy.demo.report` -- what is left
  afterwards (summary.json, report.png, report.md), computed from the run's record only.
"""
