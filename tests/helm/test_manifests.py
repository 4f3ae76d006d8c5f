"""Every rendered object is valid for the Kubernetes releases the chart supports."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest

from tests.helm.chart import KUBERNETES_VERSIONS, VALUE_SETS
# Custom resources: kubernetes-validate has no schema for them, so each has its own.
SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SCHEMAS_DIR / "servicemonitor.schema.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): SCHEMAS_DIR / "prometheusrule.schema.json",
}


def describe(error: kubernetes_validate.ValidationError) -> str:
    return f"{'.'.join(str(part) for part in error.path)}: {error.message}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("value_set", ["default", *VALUE_SETS])
def test_objects_valid_for_kubernetes(rendered, value_set, version):
    invalid = {}
    for obj in rendered[value_set].objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            invalid[f"{obj['kind']}/{obj['metadata']['name']}"] = describe(error)
    assert invalid == {}


@pytest.mark.parametrize("value_set", ["default", *VALUE_SETS])
def test_objects_have_known_kinds(rendered, value_set):
    """A kind without a schema would pass the validation above unchecked."""
    unknown = []
    for obj in rendered[value_set].objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[0], strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.append(f"{obj['apiVersion']} {obj['kind']}")
        except kubernetes_validate.ValidationError:
            pass
    assert unknown == []


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PrometheusRule"])
def test_custom_resource_valid(rendered, kind):
    schema = json.loads(CUSTOM_SCHEMAS[("monitoring.coreos.com/v1", kind)].read_text())
    objects = rendered["production"].of_kind(kind)
    assert len(objects) == 1

    jsonschema.Draft202012Validator.check_schema(schema)
    errors = [f"{'.'.join(str(part) for part in error.path)}: {error.message}"
              for error in jsonschema.Draft202012Validator(schema).iter_errors(objects[0])]
    assert errors == []


def test_monitor_schema_rejects_misspelling(rendered):
    """The schema is strict enough to catch a field the operator would silently drop."""
    schema = json.loads(CUSTOM_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")].read_text())
    monitor = json.loads(json.dumps(rendered["production"].one("ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["scrapeInterval"] = monitor["spec"]["endpoints"][0].pop("interval")

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, schema, cls=jsonschema.Draft202012Validator)


def test_service_monitor_selects_service(rendered):
    result = rendered["production"]
    monitor = result.one("ServiceMonitor")
    service = result.one("Service")
    port_names = [port["name"] for port in service["spec"]["ports"]]
    selector = monitor["spec"]["selector"]["matchLabels"]

    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["http"]
    assert "http" in port_names


def test_default_install_has_no_service_monitor(rendered):
    assert rendered["default"].of_kind("ServiceMonitor") == []
