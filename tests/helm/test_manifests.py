"""Every rendered object is valid for the Kubernetes releases the chart supports."""

from __future__ import annotations

import kubernetes_validate
import pytest

from tests.helm.chart import KUBERNETES_VERSIONS, VALUE_SETS

def describe(error: kubernetes_validate.ValidationError) -> str:
    return f"{'.'.join(str(part) for part in error.path)}: {error.message}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("value_set", ["default", *VALUE_SETS])
def test_objects_valid_for_kubernetes(rendered, value_set, version):
    invalid = {}
    for obj in rendered[value_set].objects:
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
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[0], strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unknown.append(f"{obj['apiVersion']} {obj['kind']}")
        except kubernetes_validate.ValidationError:
            pass
    assert unknown == []
