"""The radps home folder: all local state (Prefect database, server records, logs) lives here,
never in the user's ~/.prefect, so radps cannot disturb another Prefect installation."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from radps_flows.contract import CACHE_DIR_ENV

HOME_ENV = "RADPS_HOME"
DATABASE_URL_ENV = "RADPS_PREFECT_DATABASE_URL"
"""A Prefect database other than the home's SQLite file, e.g.
`postgresql+asyncpg://user:password@127.0.0.1:5432/prefect`: SQLite serialises every write and
answers a burst of them with "database is locked"."""


def radps_home() -> Path:
    home = Path(os.environ.get(HOME_ENV) or Path.home() / ".radps").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def prefect_base_env(home: Path, database: Path | None = None) -> dict[str, str]:
    """Prefect settings for every process radps starts or runs in; set before `import prefect`
    (Prefect reads its settings when first imported)."""
    prefect_home = home / "prefect"
    prefect_home.mkdir(parents=True, exist_ok=True)
    url = f"sqlite+aiosqlite:///{database or prefect_home / 'radps.db'}"
    if database is None and os.environ.get(DATABASE_URL_ENV):
        url = os.environ[DATABASE_URL_ENV]
    return {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_PROFILES_PATH": str(prefect_home / "profiles.toml"),
        "PREFECT_API_DATABASE_CONNECTION_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false",
    }


def process_env(home: Path, verbose: bool, base: dict[str, str]) -> dict[str, str]:
    """`base` with the settings for Prefect and Dask in a `radps run` process and every worker
    it spawns."""
    env = {**base, **prefect_base_env(home)}
    # Our own progress bar and summary replace Prefect's console log; everything still goes
    # to the Prefect API (`radps server` shows it) and `--verbose` brings it back.
    env.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "INFO" if verbose else "CRITICAL")
    env.setdefault("DASK_LOGGING__DISTRIBUTED", "info" if verbose else "error")
    env.setdefault("DASK_DISTRIBUTED__WORKER__DAEMON", "true")
    env.setdefault(CACHE_DIR_ENV, str(home / "cache"))  # the stage cache (radps_flows.stage_cache)
    if not verbose:
        env.setdefault("VIPER_LOGGER_NAME", LIBRARY_LOGGERS[0])
    return env


LIBRARY_LOGGERS = ("viperlog",)
"""Loggers of the libraries a run uses that print to the terminal themselves: toolviper's,
through which xradio reports its conversions at INFO. toolviper adds a stdout handler to a
logger that has none, and at import sets one up named "toolviper" unless $VIPER_LOGGER_NAME
names another: `process_env` names this one."""


def configure_process_env(home: Path, verbose: bool) -> None:
    """`process_env` for this process; must run before `import prefect` (Prefect reads its
    settings when first imported). Without ``verbose``, the libraries' own terminal logs go
    to ``<home>/logs/libraries.log`` instead, out of the progress display."""
    os.environ.update(process_env(home, verbose, dict(os.environ)))
    if not verbose:
        (home / "logs").mkdir(parents=True, exist_ok=True)
        path = home / "logs" / "libraries.log"
        handler = logging.FileHandler(path, delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        for name in LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            # once per process (`radps rerun` configures it twice): one line per record
            if not any(
                getattr(h, "baseFilename", None) == handler.baseFilename for h in logger.handlers
            ):
                logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
