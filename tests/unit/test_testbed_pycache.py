"""The testbed images' bytecode cache for Ansible's module payloads (tests/testbed/ansiballz_pycache.py)."""

import importlib.util
import os
import zipimport

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "..", "testbed", "ansiballz_pycache.py")


@pytest.fixture()
def pycache(tmp_path, monkeypatch):
    original = zipimport._compile_source
    spec = importlib.util.spec_from_file_location("testbed_ansiballz_pycache_under_test", SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Loading it patches zipimport; the test undoes that and calls the hook directly.
    zipimport._compile_source = original
    monkeypatch.setattr(module, "_CACHE", str(tmp_path))
    monkeypatch.setattr(module.os, "geteuid", lambda: 0)
    return module


def payload(name):
    return "/tmp/ansible_stat_payload_x1/ansible_stat_payload.zip/ansible/module_utils/%s" % name


def run(code):
    scope = {}
    exec(code, scope)  # noqa: S102 - the code compiled from the test's own source
    return scope["VALUE"]


def test_a_payload_source_is_compiled_once_then_read_from_the_cache(pycache, tmp_path, monkeypatch):
    source = b"VALUE = 6 * 7\n"
    first = pycache._cached_compile_source(payload("answer.py"), source)
    assert run(first) == 42
    assert len([f for _, _, files in os.walk(tmp_path) for f in files]) == 1

    def must_not_compile(pathname, source):
        raise AssertionError("compiled again instead of read from the cache")
    monkeypatch.setattr(pycache, "_compile_source", must_not_compile)
    again = pycache._cached_compile_source(payload("answer.py").replace("x1", "y2"), source)
    assert run(again) == 42


def test_another_source_or_another_file_is_not_served_from_the_cache(pycache):
    assert run(pycache._cached_compile_source(payload("a.py"), b"VALUE = 1\n")) == 1
    assert run(pycache._cached_compile_source(payload("a.py"), b"VALUE = 2\n")) == 2
    assert run(pycache._cached_compile_source(payload("b.py"), b"VALUE = 1\n")) == 1


def test_other_zip_imports_are_compiled_as_before_and_not_cached(pycache, tmp_path):
    code = pycache._cached_compile_source("/srv/app.zip/pkg/mod.py", b"VALUE = 3\n")
    assert run(code) == 3
    assert not os.listdir(tmp_path)


def test_a_broken_cache_entry_is_compiled_again(pycache, tmp_path):
    source = b"VALUE = 5\n"
    pycache._cached_compile_source(payload("c.py"), source)
    (entry,) = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files]
    with open(entry, "wb") as handle:
        handle.write(b"\x00not marshal")
    assert run(pycache._cached_compile_source(payload("c.py"), source)) == 5
