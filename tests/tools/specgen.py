#!/usr/bin/env python3
"""Print a meta/argument_specs.yml skeleton for a role from its defaults.

Usage: tests/tools/specgen.py roles/NAME > roles/NAME/meta/argument_specs.yml
then write the descriptions. tests/unit/test_argument_specs.py keeps the two
files in step afterwards.
"""

import sys

import yaml


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def spec_type(value):
    if isinstance(value, str) and "{{" in value:
        return "raw"
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}.get(type(value), "raw")


def main(role_dir):
    defaults = yaml.safe_load(open(role_dir + "/defaults/main.yml")) or {}
    options = {}
    for name, value in defaults.items():
        option = {"type": spec_type(value), "default": value, "description": "TODO"}
        if isinstance(value, list):
            option["elements"] = "raw"
        options[name] = option
    spec = {"argument_specs": {"main": {"short_description": "TODO", "options": options}}}
    sys.stdout.write("---\n" + yaml.dump(spec, Dumper=_Dumper, sort_keys=False, width=120))


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"))
