"""Ray Tune sweeps over the training attack, the learning rate and the SupCon temperature (:mod:`.driver`);
``python -m robustdx.flows.tune`` is the entry point ``ray job submit`` sends to a cluster."""
