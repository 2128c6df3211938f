"""Allow ``python -m materia`` as an alias of the ``materia`` console script."""

from materia.cli import main

raise SystemExit(main())
