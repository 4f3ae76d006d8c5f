"""The environment variables of the settings: their prefix, the case they are read in, and unknown names."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from pydantic_settings import EnvSettingsSource

ENV_PREFIX = "GATEHOUSE_"


class UpperCaseEnvSource(EnvSettingsSource):
    """The environment as pydantic-settings reads it, but only the GATEHOUSE_ names spelled in upper case.

    pydantic-settings matches names in any case, so gatehouse_workers=4 took effect
    unseen, and with GATEHOUSE_WORKERS set too, which one applied was unclear. Other
    spellings are left out here, and unknown_variables names them.
    """

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Lower-cased, as the base class returns them without case_sensitive.
        return {name.lower(): value for name, value in os.environ.items()
                if name == name.upper() or not name.upper().startswith(ENV_PREFIX)}


# Variables with the prefix that are not settings: the new password that `gatehouse users`
# reads, and the variables of the project's own tools (the set-up scripts, the Makefile,
# bench/ and tests/).
TOOL_VARIABLE_PREFIXES = ("GATEHOUSE_DEV_", "GATEHOUSE_TEST_", "GATEHOUSE_BENCH_")
TOOL_VARIABLES = frozenset({"GATEHOUSE_NEW_USER_PASSWORD", "GATEHOUSE_STATE_DIR", "GATEHOUSE_MYSQL_ADMIN_DEFAULTS",
                            "GATEHOUSE_MYSQL_ROOT_SOCKET", "GATEHOUSE_SERVICES_TIMEOUT", "GATEHOUSE_FUZZ_EXAMPLES"})


def unknown_variables(environ: Mapping[str, str], setting_names: Iterable[str]) -> list[str]:
    """Return the GATEHOUSE_ variables that name none of the settings, such as a misspelled one or one in lower case.

    setting_names are the settings' field names (service.config.Settings.model_fields),
    and the result is sorted.
    """
    settings = {ENV_PREFIX + name.upper() for name in setting_names}
    # Names in another case are unknown too: only upper-case ones are read (UpperCaseEnvSource).
    return sorted(name for name in environ
                  if name.upper().startswith(ENV_PREFIX) and name not in settings and name not in TOOL_VARIABLES
                  and not name.startswith(TOOL_VARIABLE_PREFIXES))
