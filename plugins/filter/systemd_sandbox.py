# -*- coding: utf-8 -*-
# Copyright: matcraft.deploy contributors
# Apache License 2.0 (see LICENSE)
"""The systemd sandbox of the units the collection writes, in one place.

systemd_sandbox  overrides -> the ordered ``Key=Value`` lines of the sandbox

The services' units (API, workers, worker health sidecar), the pgBackRest backup
unit and the transient units of matcraft-manage (``systemd-run --property=``) all
render this list; what differs for a unit is passed as an override, in the
template that writes the unit, so every difference is visible there.
"""

from __future__ import annotations

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - only when used without ansible-core
    class AnsibleFilterError(ValueError):
        """Raised for misuse of a filter."""


# The order in which the lines are written (systemd does not care; diffs do).
SANDBOX = (
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictNamespaces", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("RemoveIPC", "yes"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("SystemCallErrorNumber", "EPERM"),
    ("UMask", "0027"),
)


def _value(key, value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (str, int)):
        text = str(value)
        if "\n" in text:
            raise AnsibleFilterError("systemd_sandbox: the value of %s has a line break" % key)
        return text
    raise AnsibleFilterError("systemd_sandbox: the value of %s must be a string, a number, a boolean "
                             "or none (to leave the line out), not %r" % (key, value))


def systemd_sandbox(overrides=None):
    """The sandbox as ordered ``Key=Value`` lines, with ``overrides`` applied.

    ``overrides`` maps a key of the sandbox to its value for this unit (a boolean is
    written yes/no), or to ``none`` to leave the line out. A key that is not in the
    sandbox is an error (a unit's other settings are written in its template).
    """
    if overrides is None:
        overrides = {}
    if not hasattr(overrides, "items"):
        raise AnsibleFilterError("systemd_sandbox: overrides must be a mapping of key to value or none, "
                                 "not %r" % (overrides,))
    known = dict(SANDBOX)
    unknown = sorted(str(key) for key in overrides if key not in known)
    if unknown:
        raise AnsibleFilterError("systemd_sandbox: %s not part of the sandbox (known: %s)"
                                 % (", ".join(unknown), ", ".join(known)))
    lines = []
    for key, default in SANDBOX:
        value = overrides.get(key, default)
        if value is None:
            continue
        lines.append("%s=%s" % (key, _value(key, value)))
    return lines


class FilterModule(object):
    """matcraft.deploy systemd filters."""

    def filters(self):
        return {"systemd_sandbox": systemd_sandbox}
