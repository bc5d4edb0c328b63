"""Production monitoring of the service: Prometheus metrics, drift and the robustness probe (:mod:`.monitor`),
computed off the request path."""
