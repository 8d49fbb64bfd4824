"""Where the data directory is, read from the flag and the environment alone.

The CLI's `search`, `tune` and `import` only need it to find the server that holds it; reading it here
spares them the settings class (pydantic and pydantic-settings are about half of a CLI search's start).
``service.config.Settings`` stays the one reader of every setting: where a ``.env`` file could name the
directory, this gives no answer and the caller asks Settings.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_DIR = Path("./data")
ENV_NAME = "pas_data_dir"  # pydantic-settings matches environment names case-insensitively
ENV_FILE = Path(".env")  # Settings reads it from the working directory


def named_data_dir(flag: str | None) -> Path | None:
    """The directory as Settings would resolve it (flag, environment, default), or None when only Settings can
    tell (a .env file is present, or the environment's value is blank)."""
    if flag is not None:
        return Path(flag).expanduser().resolve()
    named = [value for name, value in os.environ.items() if name.lower() == ENV_NAME]
    if len(named) > 1 or (named and not named[0].strip()):
        return None
    if named:
        return Path(named[0]).expanduser().resolve()
    if ENV_FILE.exists():
        return None
    return DEFAULT_DATA_DIR.expanduser().resolve()
