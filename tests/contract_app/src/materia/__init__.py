"""MatCraft contract application: a test-only stand-in for the ``matcraft`` distribution.

It provides the interface that MatCraft documents for operators (ASGI app
``materia.api:app``, Celery app ``materia.tasks``, CLI ``materia db upgrade``)
so that the ``matcraft.deploy`` collection can be exercised end to end without
the real application.
"""

__version__ = "1.0.0"
