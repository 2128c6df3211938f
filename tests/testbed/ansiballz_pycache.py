"""Testbed images only: a bytecode cache for the modules Ansible sends to a test host.

Ansible runs each module from a zip (AnsiballZ) that Python imports with
zipimport, which compiles every source file of the payload anew on each run
and never writes bytecode: about 0.1 s of CPU per module run, some 40% of
what a module run costs in a test container. This hook keeps the compiled
code of those sources in /var/cache/testbed-ansiballz, keyed by the hash of
the source, so a file is compiled once per host. Sources are only read from
the payload (nothing else is imported differently); any problem with the
cache falls back to compiling as before. It is loaded by a .pth file of the
system Python, so virtualenvs without system packages (the application's)
never see it. Real hosts do not have it; the collection does not depend on
it.
"""

import hashlib
import marshal
import os
import zipimport

_CACHE = "/var/cache/testbed-ansiballz"
_compile_source = getattr(zipimport, "_compile_source", None)


def _cached_compile_source(pathname, source):
    if "_payload.zip" not in pathname and "AnsiballZ_" not in pathname:
        return _compile_source(pathname, source)
    inner = pathname.rsplit(".zip", 1)[-1]
    key = hashlib.sha256(inner.encode() + b"\0" + source).hexdigest()
    path = os.path.join(_CACHE, key[:2], key)
    try:
        with open(path, "rb") as handle:
            return marshal.load(handle)
    except (OSError, EOFError, ValueError, TypeError):
        pass
    code = _compile_source(pathname, source)
    if code is not None and os.geteuid() == 0:
        try:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            temporary = "%s.%d" % (path, os.getpid())
            with open(temporary, "wb") as handle:
                marshal.dump(code, handle)
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except OSError:
            pass
    return code


if _compile_source is not None:
    zipimport._compile_source = _cached_compile_source
