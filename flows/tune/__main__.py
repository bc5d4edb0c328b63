"""``python -m robustdx.flows.tune``: the sweep's command line (what ``ray job submit`` sends to a cluster).

Runs the importable command line's ``main``: Ray pickles functions of ``__main__`` by value, and the trial
function must be found by name (``robustdx.flows.tune.trainable.robustdx_trial``) in the workers.
"""

from robustdx.flows.tune.cli import main

raise SystemExit(main())
