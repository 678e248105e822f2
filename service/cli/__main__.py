"""``python -m service.cli``: the ``attnserve`` command."""

from service.cli import main

raise SystemExit(main())
