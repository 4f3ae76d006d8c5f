"""Render the chart offline with Helm's own SDK and find objects in the result."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import yaml

from tests.helpers import ROOT

CHART_DIR = ROOT / "helm" / "gatehouse"
VALUE_SETS_DIR = Path(__file__).resolve().parent / "values"
RELEASE = "gh"
NAMESPACE = "auth"
# Value sets beside the chart defaults, each a file in VALUE_SETS_DIR.
VALUE_SETS = ("minimal", "production", "existing-secret", "sentinel")
# The oldest Kubernetes release the chart supports (Chart.yaml kubeVersion) and a recent one.
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")


@dataclass
class Rendered:
    """The objects one render produced, in template order, and NOTES.txt."""

    objects: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        matches = [obj for obj in self.of_kind(kind) if name is None or obj["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
        return matches[0]

    def names(self, kind: str) -> set[str]:
        return {obj["metadata"]["name"] for obj in self.of_kind(kind)}


def render(values: dict[str, Any]) -> Rendered:
    """Render the chart as `helm install` would, for release RELEASE in NAMESPACE."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)

    objects: list[dict[str, Any]] = []
    notes = ""
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            notes = manifests[path]
            continue
        objects.extend(doc for doc in yaml.safe_load_all(manifests[path]) if doc)
    return Rendered(objects, notes)


def load_value_set(name: str, secrets: dict[str, Any]) -> dict[str, Any]:
    """Read a value set and add the generated `secrets` values, unless it names an existing Secret."""
    if name == "default":
        return {}

    values = yaml.safe_load((VALUE_SETS_DIR / f"{name}.yaml").read_text())
    if not values.get("secret", {}).get("existingSecret"):
        values["secret"] = {**values.get("secret", {}), **copy.deepcopy(secrets)}
    return values


def pod_specs(rendered: Rendered) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Yield each object that runs pods, with its pod spec."""
    for obj in rendered.objects:
        if obj["kind"] == "Deployment":
            yield obj, obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Job":
            yield obj, obj["spec"]["template"]["spec"]
        elif obj["kind"] == "CronJob":
            yield obj, obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def set_path(values: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Return a copy of values with the dotted path set to value."""
    result = copy.deepcopy(values)
    node = result
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return result
