# -*- coding: utf-8 -*-
# Copyright: matcraft.deploy contributors
# Apache License 2.0 (see LICENSE)
"""Clear systemd's failed state and start rate counter of units before a restart."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: systemd_reset_failed
short_description: Clear the failed state and start limit of failed systemd units
version_added: "0.1.0"
description:
  - Runs C(systemctl reset-failed) for each unit, so that a restart which
    follows is not refused with "Start request repeated too quickly".
  - systemd counts every start of a unit, automatic restarts and manual
    starts alike, against C(StartLimitIntervalSec) and C(StartLimitBurst).
    A unit that crash-looped in an earlier run (a wrong setting, since fixed
    in the inventory) refuses every start until the interval has passed.
  - Only units in the failed state are reset (C(systemctl is-failed)); units
    that are running, starting, stopped or unknown to systemd are left as
    they are, so the module changes nothing on a healthy host.
  - Reports a change for each unit it reset.
options:
  name:
    description: Names of the units, with their suffix (C(nginx.service)).
    type: list
    elements: str
    required: true
author:
  - matcraft.deploy contributors
"""

EXAMPLES = r"""
- name: Let the API start again if an earlier run left it at its start limit
  matcraft.deploy.systemd_reset_failed:
    name: [matcraft-api.service]
"""

RETURN = r"""
reset:
  description: The units that were in the failed state and were reset (would be, in check mode).
  returned: always
  type: list
  elements: str
not_loaded:
  description: Failed units that systemd unloaded before they could be reset (nothing left to clear).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule


def reset_units(module, systemctl, units):
    """Reset each failed unit; return (reset, not_loaded). Fails the module on any other error."""
    reset, not_loaded = [], []
    for unit in units:
        rc, out, err = module.run_command([systemctl, "is-failed", "--quiet", unit])
        if rc != 0:  # active, activating, inactive or unknown: nothing to reset
            continue
        if not module.check_mode:
            rc, out, err = module.run_command([systemctl, "reset-failed", unit])
            if rc != 0:
                if "not loaded" in err:  # unloaded since is-failed: nothing left to reset
                    not_loaded.append(unit)
                    continue
                module.fail_json(msg="systemctl reset-failed %s failed (rc %d): %s" % (unit, rc, (err or out).strip()),
                                 reset=reset, not_loaded=not_loaded)
        reset.append(unit)
    return reset, not_loaded


def main():
    module = AnsibleModule(
        argument_spec={"name": {"type": "list", "elements": "str", "required": True}},
        supports_check_mode=True,
    )
    systemctl = module.get_bin_path("systemctl", required=True)
    reset, not_loaded = reset_units(module, systemctl, module.params["name"])
    module.exit_json(changed=bool(reset), reset=reset, not_loaded=not_loaded)


if __name__ == "__main__":
    main()
