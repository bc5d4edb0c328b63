#!/usr/bin/env python3
"""Print a Prometheus Operator PrometheusRule holding deploy/prometheus/rules/*.yml, unchanged.

Why generated and not committed: the rule files are the single source (promtool-tested in
deploy/prometheus/tests); a copy in a manifest would drift from them.

    python deploy/k8s/prometheusrule.py | kubectl apply -f -
    python deploy/k8s/prometheusrule.py --namespace monitoring --label release=kube-prometheus-stack
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

RULES = Path(__file__).resolve().parents[1] / "prometheus" / "rules"


def manifest(namespace: str, labels: dict[str, str], rules_dir: Path = RULES) -> dict:
    """The PrometheusRule object with every group of every rule file, in file order."""
    groups = [group for path in sorted(rules_dir.glob("*.yml")) for group in yaml.safe_load(path.read_text())["groups"]]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "robustdx", "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "robustdx", **labels}},
        "spec": {"groups": groups},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--namespace", default="robustdx", help="namespace of the PrometheusRule (default: %(default)s)")
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra metadata label, e.g. release=kube-prometheus-stack",
    )
    args = parser.parse_args(argv)
    labels = dict(item.split("=", 1) for item in args.label)
    yaml.safe_dump(manifest(args.namespace, labels), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
