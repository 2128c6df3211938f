# -*- coding: utf-8 -*-
# Copyright: matcraft.deploy contributors
# Apache License 2.0 (see LICENSE)
"""Read Prometheus's active targets, waiting (bounded) until they have been scraped or are up."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: prometheus_targets
short_description: Read Prometheus's active targets, waiting a bounded time for first or healthy scrapes
version_added: "0.1.0"
description:
  - Reads C(/api/v1/targets?state=active) of a Prometheus server and sorts the
    targets into up, down and never scraped (health C(unknown)).
  - Right after a deploy, a target can be down only because Prometheus
    scraped it before its service had started, or not scraped yet at all;
    the next scrape (one scrape interval later) tells the truth. With
    I(wait), the module reads the targets again every I(interval) seconds
    until the state asked for holds or I(timeout) seconds have passed.
  - It never fails because of a target's health (the caller judges
    C(down) and C(unscraped)); it fails when Prometheus does not answer
    within I(timeout), or answers with an error.
  - Changes nothing; runs in check mode too.
options:
  url:
    description: Base URL of Prometheus, such as C(https://10.0.0.5:9090).
    type: str
    required: true
  username:
    description: Basic auth user.
    type: str
  password:
    description: Basic auth password.
    type: str
  ca_path:
    description: CA bundle that Prometheus's certificate must verify against (https only).
    type: path
  wait:
    description:
      - C(none) reads once.
      - C(scraped) waits until no target is left that Prometheus never scraped.
      - C(up) waits until every target is up.
    type: str
    choices: [none, scraped, up]
    default: none
  timeout:
    description: Seconds to wait at most, for Prometheus to answer and for the state asked for.
    type: int
    default: 90
  interval:
    description: Seconds between two reads.
    type: int
    default: 3
author:
  - matcraft.deploy contributors
"""

EXAMPLES = r"""
- name: Wait until Prometheus has scraped every target once after the deploy, and every one is up
  matcraft.deploy.prometheus_targets:
    url: https://10.0.0.5:9090
    username: matcraft
    password: "{{ matcraft_monitoring_web_password }}"
    ca_path: /etc/matcraft/pki/ca.crt
    wait: up
    timeout: 90
  register: targets
"""

RETURN = r"""
targets:
  description: Every active target, with C(name) (job, host and instance), C(health), C(last_error) and C(last_scrape).
  returned: success
  type: list
  elements: dict
down:
  description: Names of the targets whose last scrape failed.
  returned: success
  type: list
  elements: str
unscraped:
  description: Names of the targets Prometheus has not scraped yet.
  returned: success
  type: list
  elements: str
waited:
  description: Seconds spent waiting.
  returned: success
  type: float
timed_out:
  description: Whether the state asked for by I(wait) still did not hold after I(timeout) seconds.
  returned: success
  type: bool
"""

import base64
import json
import ssl
import time
import urllib.error
import urllib.request

from ansible.module_utils.basic import AnsibleModule


def target_name(target):
    """'job=node host=db1 instance=10.0.0.7:9100': what an operator needs to find the target."""
    labels = target.get("labels") or {}
    parts = ["job=%s" % labels.get("job", "?")]
    if labels.get("matcraft_host"):
        parts.append("host=%s" % labels["matcraft_host"])
    parts.append("instance=%s" % labels.get("instance", target.get("scrapeUrl", "?")))
    return " ".join(parts)


def summarize(active):
    """The targets sorted by health: (targets, down, unscraped)."""
    targets, down, unscraped = [], [], []
    for target in active:
        name = target_name(target)
        health = target.get("health", "unknown")
        targets.append({"name": name, "health": health, "last_error": target.get("lastError", ""),
                        "last_scrape": target.get("lastScrape", "")})
        if health == "down":
            down.append(name)
        elif health != "up":
            unscraped.append(name)
    return targets, sorted(down), sorted(unscraped)


def settled(wait, down, unscraped):
    """Whether the state asked for holds."""
    if wait == "scraped":
        return not unscraped
    if wait == "up":
        return not unscraped and not down
    return True


def read_targets(url, username, password, ca_path, timeout):
    """The activeTargets list of Prometheus's targets API."""
    request = urllib.request.Request(url.rstrip("/") + "/api/v1/targets?state=active")
    if username:
        token = base64.b64encode(("%s:%s" % (username, password or "")).encode("utf-8")).decode("ascii")
        request.add_header("Authorization", "Basic " + token)
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context(cafile=ca_path) if ca_path else ssl.create_default_context()
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        body = json.loads(response.read().decode("utf-8"))
    if body.get("status") != "success":
        raise ValueError("Prometheus answered %s" % body.get("status"))
    return (body.get("data") or {}).get("activeTargets") or []


def poll(reader, wait, timeout, interval, clock=time.monotonic, sleep=time.sleep):
    """Read the targets until the state asked for holds or the time is up.

    Returns (targets, down, unscraped, waited, timed_out). Errors of the reader
    are retried until the time is up, then raised.
    """
    start = clock()
    while True:
        try:
            targets, down, unscraped = summarize(reader())
            error = None
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
            error = exc
        elapsed = clock() - start
        if error is None and settled(wait, down, unscraped):
            return targets, down, unscraped, round(elapsed, 1), False
        if elapsed + interval > timeout:
            if error is not None:
                raise error
            return targets, down, unscraped, round(elapsed, 1), True
        sleep(interval)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            username=dict(type="str"),
            password=dict(type="str", no_log=True),
            ca_path=dict(type="path"),
            wait=dict(type="str", choices=["none", "scraped", "up"], default="none"),
            timeout=dict(type="int", default=90),
            interval=dict(type="int", default=3),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["timeout"] < 1 or params["interval"] < 1:
        module.fail_json(msg="timeout and interval must be at least 1 second")
    per_read = min(15, params["timeout"])

    def reader():
        return read_targets(params["url"], params["username"], params["password"], params["ca_path"], per_read)

    try:
        targets, down, unscraped, waited, timed_out = poll(reader, params["wait"], params["timeout"], params["interval"])
    except urllib.error.HTTPError as exc:
        module.fail_json(msg="Prometheus at %s answered HTTP %s to its targets API" % (params["url"], exc.code))
    except (OSError, ValueError) as exc:
        module.fail_json(msg="Prometheus at %s did not answer its targets API within %s s: %s"
                         % (params["url"], params["timeout"], exc))
    module.exit_json(changed=False, targets=targets, down=down, unscraped=unscraped,
                     waited=waited, timed_out=timed_out)


if __name__ == "__main__":
    main()
