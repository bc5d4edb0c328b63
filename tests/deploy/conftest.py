"""Fixtures of the deploy tests: the real monitoring stack from :mod:`tests.deploy.stack`.

The fixtures live in ``tests/deploy/stack.py`` (a pytest plugin) rather than here because the
end-to-end alert test in ``tests/integration`` and the receiver's unit tests use them too, and a
conftest's fixtures are visible only below its folder. Registering the plugin once, in tests/conftest.py (instead of importing
its fixtures here), keeps one instance of each session fixture — one Prefect server, one trained
model, one ``bentoml serve`` — however many test folders use them.

What it provides (see the module): ``monitoring_tools`` (prometheus / promtool / alertmanager /
pushgateway, apt-installed as root when missing, a clear failure otherwise), ``model_home``,
``service``, ``pushgateway``, ``receiver_factory``-style helpers, and helpers to start a process on a free
127.0.0.1 port (:func:`tests.deploy.stack.start_on_free_port`) that always stop its process group.
"""

from __future__ import annotations
