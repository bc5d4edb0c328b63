"""``python -m robustdx.flows.tune``: the sweep's command line (what ``ray job submit`` sends to a cluster).

Runs the importable driver's ``main``: Ray pickles functions of ``__main__`` by value, and the trial
function must be found by name (``robustdx.flows.tune.driver.robustdx_trial``) in the workers.
"""

from robustdx.flows.tune.driver import main

raise SystemExit(main())
