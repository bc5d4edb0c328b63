"""Ray Tune sweeps over the training attack, the learning rate and the SupCon temperature.

:mod:`.space` (search domains and trial run configs), :mod:`.trainable` (the trial a Ray worker runs),
:mod:`.results` (trial rows, best trial, plot, table), :mod:`.driver` (:func:`~.driver.run_sweep`) and
:mod:`.cli`; ``python -m robustdx.flows.tune`` is the entry point ``ray job submit`` sends to a cluster."""
