#!/usr/bin/env python3
"""Render the prometheus role's alerting templates with the role's defaults.

Renders roles/prometheus/templates/rules/matcraft.rules.yml.j2 and
roles/prometheus/templates/mtail/nginx_matcraft.mtail.j2 the way
ansible.builtin.template would, without Ansible:

- variables: roles/prometheus/defaults/main.yml, then each --extra-vars file
  (later wins), like inventory or -e overrides;
- values that are templates themselves ("{{ 2 * other_var }}") are rendered
  iteratively, each once the values it refers to are rendered (Ansible
  resolves them lazily; the result is the same without cycles, and a cycle or
  an undefined reference is an error). Like Ansible, only the variables the
  templates use (directly or through other variables) are resolved: defaults
  of the role that refer to inventory inputs (matcraft_domain, host facts)
  stay as they are. A value that is exactly one
  "{{ expression }}" keeps its native type (int, list, ...) as in ansible-core
  2.19; anything else becomes a string;
- Jinja2 settings of the template module: trim_blocks=True,
  lstrip_blocks=False, trailing newline kept, undefined variables are errors;
- ansible_managed is "Ansible managed" unless a vars file sets it;
- only core Jinja2 filters plus bool, mandatory, regex_escape and to_json; an
  Ansible filter missing here makes rendering fail loudly, never silently.

Usage: render.py [--out DIR] [--extra-vars FILE ...]
Prints the output directory (a new temporary one without --out), which holds
rules/matcraft.rules.yml and mtail/nginx_matcraft.mtail.
"""

import argparse
import json
import pathlib
import re
import sys
import tempfile

import jinja2
import jinja2.meta
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "prometheus"
DEFAULTS = ROLE / "defaults" / "main.yml"
TEMPLATES = {
    # template (relative to the role's templates/) -> output (relative to --out)
    "rules/matcraft.rules.yml.j2": "rules/matcraft.rules.yml",
    "mtail/nginx_matcraft.mtail.j2": "mtail/nginx_matcraft.mtail",
}
SINGLE_EXPRESSION = re.compile(r"^\{\{(?P<expr>.*)\}\}$", re.DOTALL)


def _bool(value):
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("yes", "on", "1", "true", "t", "y")


def _mandatory(value, msg=None):
    if isinstance(value, jinja2.Undefined):
        raise jinja2.UndefinedError(msg or "Mandatory variable not defined.")
    return value


def _regex_escape(value):
    return re.escape(str(value))


def _to_json(value, **kwargs):
    return json.dumps(value, **kwargs)


def _environment(loader=None):
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=False,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(
        bool=_bool, mandatory=_mandatory, regex_escape=_regex_escape, to_json=_to_json
    )
    return env


def _is_template(value):
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def _render_value(env, value, context):
    if isinstance(value, dict):
        return {k: _render_value(env, v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_value(env, v, context) for v in value]
    if not _is_template(value):
        return value
    single = SINGLE_EXPRESSION.match(value.strip())
    if single and not re.search(r"\{\{|\}\}|\{%", single.group("expr")):
        return env.compile_expression(single.group("expr"), undefined_to_none=False)(**context)
    return env.from_string(value).render(**context)


def _template_strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _template_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _template_strings(item)
    elif _is_template(value):
        yield value


def _contains_template(value):
    return any(True for _ in _template_strings(value))


def _references(env, value):
    names = set()
    for text in _template_strings(value):
        names |= jinja2.meta.find_undeclared_variables(env.parse(text))
    return names


def needed_variables(variables):
    """Names the templates use, directly or through the values of other variables."""
    env = _environment()
    names = set()
    for template in TEMPLATES:
        source = (ROLE / "templates" / template).read_text(encoding="utf-8")
        names |= jinja2.meta.find_undeclared_variables(env.parse(source))
    pending = list(names)
    while pending:
        name = pending.pop()
        if name not in variables:
            continue
        for ref in _references(env, variables[name]):
            if ref not in names:
                names.add(ref)
                pending.append(ref)
    return names


def resolve(variables, only=None):
    """Render templated values once everything they refer to is resolved.

    Like Ansible's lazy templating: a value is rendered only after the values
    it refers to are plain data, so `x | int` never sees an unrendered
    "{{ ... }}" string. Undefined references and cycles are errors. With
    `only`, just those names (and what they refer to) are resolved.
    """
    env = _environment()
    current = dict(variables)
    pending = {name for name, value in current.items()
               if _contains_template(value) and (only is None or name in only)}
    while pending:
        progressed = False
        for name in sorted(pending):
            refs = _references(env, current[name])
            missing = sorted(refs - current.keys())
            if missing:
                raise ValueError(f"{name}: undefined variable(s) {', '.join(missing)}")
            if refs & pending:
                continue
            current[name] = _render_value(env, current[name], current)
            pending.discard(name)
            progressed = True
        if not progressed:
            raise ValueError(f"variables refer to each other in a cycle: {', '.join(sorted(pending))}")
    return current


def load_yaml(path):
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of variables")
    return data


def load_vars(extra_vars_files=()):
    """The role's defaults overlaid with extra vars files, resolved."""
    variables = {"ansible_managed": "Ansible managed"}
    variables.update(load_yaml(DEFAULTS))
    for path in extra_vars_files:
        variables.update(load_yaml(path))
    return resolve(variables, only=needed_variables(variables))


def render_template(name, variables):
    env = _environment(jinja2.FileSystemLoader(str(ROLE / "templates")))
    return env.get_template(name).render(**variables)


def render_all(out_dir, extra_vars_files=()):
    variables = load_vars(extra_vars_files)
    out = pathlib.Path(out_dir)
    written = []
    for template, target in TEMPLATES.items():
        path = out / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_template(template, variables), encoding="utf-8")
        written.append(path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="output directory (default: a new temporary directory)")
    parser.add_argument(
        "-e", "--extra-vars", action="append", default=[], metavar="FILE",
        help="YAML file of variables overriding the defaults (repeatable)",
    )
    args = parser.parse_args(argv)
    out = args.out or tempfile.mkdtemp(prefix="matcraft-rules-")
    try:
        render_all(out, args.extra_vars)
    except (jinja2.TemplateError, ValueError, OSError, yaml.YAMLError) as exc:
        print(f"render.py: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
