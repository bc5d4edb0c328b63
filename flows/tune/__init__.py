"""Ray Tune sweeps over the training attack, the learning rate and the SupCon temperature.

:mod:`.space` (search domains and trial run configs), :mod:`.trainable` (the trial a Ray worker runs),
:mod:`.results` (trial rows, best trial, plot, table) and :mod:`.driver` (:func:`~.driver.run_sweep`); the
command line ``robustdx sweep`` (:mod:`robustdx.cli.sweep`) is the entry point ``ray job submit`` sends to a cluster."""
