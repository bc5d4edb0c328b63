"""Production monitoring of the service, computed off the request path: the Prometheus metric objects
(:mod:`.metrics`), the drift statistics (:mod:`.drift`), the PGD robustness probe (:mod:`.robustness`)
and the background thread that schedules them (:mod:`.monitor`)."""
