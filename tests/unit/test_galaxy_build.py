"""The Galaxy tarball carries the collection and nothing of the test suite, and
installs into an empty collections path where ansible-doc lists the roles."""

import os
import subprocess
import tarfile

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(__import__("sys").executable)
FORBIDDEN_TOP = {"tests", "molecule", ".ci", ".config", ".git", ".venv", ".cache", "benchmarks", ".ansible"}


def _tool(name):
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else name


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    subprocess.run([_tool("ansible-galaxy"), "collection", "build", "--force", "--output-path", str(out), ROOT],
                   check=True, capture_output=True, text=True)
    built = [f for f in os.listdir(out) if f.endswith(".tar.gz")]
    assert len(built) == 1, built
    return os.path.join(out, built[0])


def test_tarball_has_no_test_files(tarball):
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    tops = {n.split("/")[0] for n in names}
    assert not tops & FORBIDDEN_TOP, sorted(tops & FORBIDDEN_TOP)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    for needed in ("roles", "playbooks", "plugins", "docs", "meta", "README.md", "MANIFEST.json"):
        assert needed in tops or needed in names, needed


def test_installed_tarball_lists_roles(tarball, tmp_path):
    target = tmp_path / "collections"
    empty_cfg = tmp_path / "ansible.cfg"
    empty_cfg.write_text("[defaults]\n")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(target), ANSIBLE_CONFIG=str(empty_cfg))
    subprocess.run([_tool("ansible-galaxy"), "collection", "install", "--force", "--no-deps", "-p", str(target), tarball],
                   check=True, capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert (target / "ansible_collections" / "matcraft" / "deploy" / "MANIFEST.json").exists()
    listed = subprocess.run([_tool("ansible-doc"), "-t", "role", "-l", "matcraft.deploy"],
                            check=True, capture_output=True, text=True, env=env, cwd=str(tmp_path)).stdout
    roles = sorted(d for d in os.listdir(os.path.join(ROOT, "roles"))
                   if os.path.isdir(os.path.join(ROOT, "roles", d, "tasks")))
    for role in roles:
        assert "matcraft.deploy.%s" % role in listed, (role, listed)


def test_galaxy_dependencies_are_the_collections_used():
    """Every collection named in roles/playbooks is a declared dependency, and vice versa."""
    galaxy = yaml.safe_load(open(os.path.join(ROOT, "galaxy.yml")))
    declared = set(galaxy["dependencies"])
    used = set()
    for base in ("roles", "playbooks"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, base)):
            for name in files:
                if not name.endswith((".yml", ".yaml")):
                    continue
                text = open(os.path.join(dirpath, name)).read()
                for ns in ("community.general", "community.postgresql", "community.crypto", "ansible.posix",
                           "community.docker"):
                    if ns + "." in text:
                        used.add(ns)
    assert used <= declared, "used but not declared: %s" % sorted(used - declared)
    assert declared <= used, "declared but not used: %s" % sorted(declared - used)
