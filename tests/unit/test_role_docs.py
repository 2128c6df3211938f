"""Each role README's variable tables are the ones tests/tools/role_docs.py writes from meta/argument_specs.yml.

A spec edited without `make docs` fails here; so does a README without the generated block.
"""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SPEC = importlib.util.spec_from_file_location("role_docs", os.path.join(ROOT, "tests", "tools", "role_docs.py"))
role_docs = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(role_docs)
ROLES = sorted(d for d in os.listdir(os.path.join(ROOT, "roles"))
               if os.path.isdir(os.path.join(ROOT, "roles", d, "tasks")))


def _readme(role):
    with open(os.path.join(ROOT, "roles", role, "README.md")) as handle:
        return handle.read()


def test_every_role_is_documented_by_the_generator():
    assert role_docs.roles() == ROLES


@pytest.mark.parametrize("role", ROLES)
def test_readme_has_the_generated_block_under_role_variables(role):
    readme = _readme(role)
    assert readme.count(role_docs.BEGIN) == 1 and readme.count(role_docs.END) == 1, \
        "roles/%s/README.md lacks the generated markers (run `make docs`)" % role
    section = readme.split(role_docs.HEADING, 1)[1]
    assert section.lstrip().startswith(role_docs.BEGIN), \
        "roles/%s/README.md: the generated block must follow %r" % (role, role_docs.HEADING)


@pytest.mark.parametrize("role", ROLES)
def test_readme_tables_match_the_argument_specs(role):
    readme = _readme(role)
    block = readme[readme.index(role_docs.BEGIN):readme.index(role_docs.END) + len(role_docs.END)]
    assert block == role_docs.render(role), \
        "roles/%s/README.md is out of date with meta/argument_specs.yml: run `make docs`" % role


def test_check_mode_reports_nothing_stale():
    assert role_docs.main(["--check"]) == 0
