"""The README documents every setting the service reads."""

from __future__ import annotations

from service.config import ENV_PREFIX, Settings
from tests.helpers import ROOT


def test_readme_lists_every_setting():
    readme = (ROOT / "README.md").read_text()
    missing = [ENV_PREFIX + name.upper() for name in Settings.model_fields
               if f"`{ENV_PREFIX}{name.upper()}`" not in readme]
    assert missing == []
