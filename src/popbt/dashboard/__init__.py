"""``popbt dashboard``: read-only web pages that follow experiments live, in a browser.

``data`` turns a history into JSON-ready dicts and needs no web library; ``app`` (Starlette
and uvicorn, the ``dashboard`` extra) is imported only when a server starts, so that
``import popbt`` never pulls them in and a missing extra is one line, not a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..experiment import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050
WEB_PACKAGES = ("starlette", "uvicorn", "anyio")


def serve(
    storage: str | None = None,
    dir: str | os.PathLike | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the dashboard of the store at ``--storage``/``--dir`` until Ctrl-C.

    ``port`` 0 picks a free port; ``announce`` receives the line with the address (default:
    printed). Raises ConfigError when Starlette or uvicorn is missing or the address cannot
    be bound, and ``history.NoDatabase`` for a sqlite file that does not exist."""
    try:
        from . import app
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] not in WEB_PACKAGES:
            raise
        raise ConfigError(
            f"popbt dashboard needs {e.name.split('.')[0]}, which is not installed: pip install 'popbt[dashboard]'"
        ) from None
    app.serve(storage, dir, host, port, announce)


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "serve"]
