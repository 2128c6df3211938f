#!/usr/bin/env python3
"""Write each role README's variable tables from the role's meta/argument_specs.yml.

Usage: tests/tools/role_docs.py [--check] [ROLE ...]   (no ROLE: every role; `make docs`)

The tables go between BEGIN and END below, under `## Role Variables` (the markers
are added under that heading when a README lacks them); the rest of the README is
left alone. --check writes nothing and exits 1 listing the READMEs that are out of
date (tests/unit/test_role_docs.py runs the same comparison).
"""

import argparse
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BEGIN = "<!-- BEGIN generated from meta/argument_specs.yml: tests/tools/role_docs.py -->"
END = "<!-- END generated -->"
HEADING = "## Role Variables"
MAX_DEFAULT = 72  # longer defaults are cut; multi-line ones point to the spec
INTRO = ("The tables are generated from [`meta/argument_specs.yml`](meta/argument_specs.yml), which "
         "`ansible-doc -t role matcraft.deploy.%s` and argument validation use too: edit the spec, then run `make docs`.")


def roles():
    base = os.path.join(ROOT, "roles")
    return sorted(r for r in os.listdir(base) if os.path.exists(os.path.join(base, r, "meta", "argument_specs.yml")))


def code(text):
    text = text.replace("|", "\\|")
    return "`` %s ``" % text if "`" in text else "`%s`" % text


def show_default(name, spec):
    if "default" not in spec:
        return ""
    value = spec["default"]
    if isinstance(value, str):
        text = value if value else '""'
    else:
        text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=float("inf")).strip()
        text = text[:-4].rstrip() if text.endswith("\n...") else text
    if spec.get("no_log") and value and "{{" not in str(value):
        return "(secret, not shown)"
    if "\n" in text.strip():
        return "(multi-line, see [`meta/argument_specs.yml`](meta/argument_specs.yml))"
    if len(text) > MAX_DEFAULT:
        text = text[:MAX_DEFAULT - 12].rstrip() + " …"
    return code(text)


def show_type(spec):
    kind = spec.get("type", "str")
    return "%s of %s" % (kind, spec["elements"]) if spec.get("elements") else kind


def text(value):
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    value = " ".join(str(value or "").split()).replace("|", "\\|")
    return re.sub(r"<(?=[A-Za-z/!])", "&lt;", value)


def describe(spec):
    parts = [text(spec.get("description"))]
    if spec.get("choices"):
        parts.append("Choices: %s." % ", ".join(code(str(c)) for c in spec["choices"]))
    if spec.get("required"):
        parts.append("Required.")
    if spec.get("no_log"):
        parts.append("Secret: never logged (`no_log`).")
    return " ".join(p for p in parts if p)


def table(options):
    lines = ["| variable | type | default | description |", "| --- | --- | --- | --- |"]
    for name, spec in options.items():
        lines.append("| `%s` | %s | %s | %s |" % (name, show_type(spec), show_default(name, spec), describe(spec)))
    return lines


def render(role):
    with open(os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml")) as handle:
        specs = yaml.safe_load(handle)["argument_specs"]
    lines = [BEGIN, INTRO % role, ""]
    lines += table(specs["main"].get("options") or {})
    others = [name for name in specs if name != "main"]
    if others:
        lines += ["", "Other entry points (`include_role` / `import_role` with `tasks_from: <name>.yml`):"]
    for name in others:
        entry = specs[name]
        lines += ["", "**`%s`**: %s" % (name, text(entry.get("short_description")))]
        if entry.get("options"):
            lines += [""] + table(entry["options"])
        else:
            lines[-1] += " (no options)"
    return "\n".join(lines + ["", END])


def updated(role, readme):
    block = render(role)
    if BEGIN in readme and END in readme:
        start, end = readme.index(BEGIN), readme.index(END) + len(END)
        return readme[:start] + block + readme[end:]
    if HEADING not in readme:
        raise SystemExit("roles/%s/README.md has no %r section" % (role, HEADING))
    head, tail = readme.split(HEADING, 1)
    return head + HEADING + "\n\n" + block + "\n\n" + tail.lstrip("\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a README is out of date")
    parser.add_argument("roles", nargs="*", metavar="ROLE", help="roles to do (default: all)")
    args = parser.parse_args(argv)
    stale = []
    for role in args.roles or roles():
        path = os.path.join(ROOT, "roles", role, "README.md")
        with open(path) as handle:
            readme = handle.read()
        new = updated(role, readme)
        if new != readme:
            stale.append(os.path.relpath(path, ROOT))
            if not args.check:
                with open(path, "w") as handle:
                    handle.write(new)
    if args.check and stale:
        print("out of date (run `make docs`):\n  " + "\n  ".join(stale))
        return 1
    for path in stale:
        print("wrote " + path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
