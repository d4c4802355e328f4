"""Settings resolved once, in one place: command-line flag > environment > default.

Library functions take explicit parameters; the API and the CLI call ``resolve_settings``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from teadist.errors import UsageError

DEFAULT_MODELS_DIR = Path("~/.cache/tea/models")
SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GITHUB_TOKEN", "GH_TOKEN")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


@dataclass(frozen=True)
class Settings:
    """What a command or an API call runs with. What is passed beats the environment, which beats the
    default; a variable is read only when its value is needed (``strict`` checks them all at once, as
    the CLI does: a variable that does not parse is a usage error, like a bad flag)."""

    models_dir: Path
    offline: bool
    tea_model_path: str | None
    appdir: str | None
    debug: bool
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def hf_endpoint(self) -> str | None:
        endpoint = self.env.get("HF_ENDPOINT") or None
        if endpoint is None:
            return None
        from teadist.base.urls import url_problem

        problem = url_problem(endpoint)
        if problem is not None:
            raise UsageError(f"HF_ENDPOINT {endpoint[:80]!r} {problem}", hint="set it to the Hub's https:// URL")
        return endpoint.rstrip("/")

    @property
    def hf_token(self) -> str | None:
        return self.env.get("HF_TOKEN") or self.env.get("HUGGING_FACE_HUB_TOKEN") or None

    @property
    def retries(self) -> int:
        return int(_number(self.env, "TEADIST_RETRIES", 6, whole=True, least=1))

    @property
    def retry_backoff(self) -> float:
        return _number(self.env, "TEADIST_RETRY_BACKOFF", 0.5, least=0.0)

    @property
    def stall_timeout(self) -> float:
        return _number(self.env, "TEADIST_STALL_TIMEOUT", 30.0, least=0.001)

    @property
    def max_connections(self) -> int:
        """Per host, when --jobs does not fix the count."""
        return int(_number(self.env, "TEADIST_MAX_CONNECTIONS", 16, whole=True, least=1))

    @property
    def range_align(self) -> int:
        """Byte ranges are cut at multiples of this (the block size of block hashes: 8 MiB)."""
        return int(_number(self.env, "TEADIST_RANGE_ALIGN", 8 * 1024 * 1024, whole=True, least=4096))


def env_flag(env: Mapping[str, str], name: str) -> bool:
    """A yes/no variable: 1/true/yes/on or 0/false/no/off (or unset); anything else is a usage error,
    as a bad flag would be."""
    text = env.get(name, "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UsageError(f"{name} must be 1 or 0 (true/false, yes/no, on/off), not {env.get(name, '')[:40]!r}",
                     hint=f"unset {name}, or set it to 1 or 0")


def folder_setting(text: str | os.PathLike[str], what: str) -> Path:
    """A folder named by a flag, an argument or a variable: not empty, ``~`` expanded (an unknown
    user's ``~name`` is a usage error), and not something other than a folder."""
    raw = os.fspath(text)
    if not isinstance(raw, str):
        raise UsageError(f"{what} must be a path, not {type(raw).__name__}")
    if not raw.strip():
        raise UsageError(f"{what} is empty: name a folder", hint="write . for the current folder")
    try:
        folder = Path(raw).expanduser()
    except RuntimeError:
        raise UsageError(f"{what} {raw[:200]!r}: no such user's home folder",
                         hint="write the folder's full path") from None
    if os.path.lexists(folder) and not folder.is_dir():
        raise UsageError(f"{what} {folder} is not a folder", hint="name a folder, or move that file away")
    return folder


def resolve_settings(cache_dir: str | os.PathLike[str] | None = None, offline: bool | None = None,
                     debug: bool = False, env: Mapping[str, str] | None = None, strict: bool = False) -> Settings:
    env = os.environ if env is None else env
    if cache_dir is not None:
        models_dir = folder_setting(cache_dir, "--cache-dir")
    elif env.get("TEA_MODELS_DIR"):
        models_dir = folder_setting(env["TEA_MODELS_DIR"], "TEA_MODELS_DIR")
    else:
        models_dir = DEFAULT_MODELS_DIR.expanduser()
    if offline is None:
        offline = env_flag(env, "TEA_OFFLINE") | env_flag(env, "HF_HUB_OFFLINE")  # both checked, always
    settings = Settings(models_dir=models_dir, offline=offline, tea_model_path=env.get("TEA_MODEL_PATH") or None,
                        appdir=env.get("APPDIR") or None, debug=debug, env=env)
    if strict:  # every variable checked now, before any work
        for name in ("hf_endpoint", "retries", "retry_backoff", "stall_timeout", "max_connections", "range_align"):
            getattr(settings, name)
    return settings


@dataclass(frozen=True)
class ReleaseSettings:
    """What ``package-wasm`` and ``release publish`` read from the environment (checked there)."""

    github_token: str | None
    github_api_url: str
    write_interval: float
    source_date_epoch: str


def resolve_release_settings(env: Mapping[str, str] | None = None) -> ReleaseSettings:
    env = os.environ if env is None else env
    interval_text = env.get("TEADIST_GITHUB_WRITE_INTERVAL", "1")
    try:
        interval = float(interval_text)
    except ValueError:
        raise UsageError(f"TEADIST_GITHUB_WRITE_INTERVAL must be seconds, not {interval_text[:40]!r}") from None
    return ReleaseSettings(
        github_token=env.get("GITHUB_TOKEN") or env.get("GH_TOKEN") or None,
        github_api_url=env.get("GITHUB_API_URL") or "https://api.github.com",
        write_interval=interval,
        source_date_epoch=env.get("SOURCE_DATE_EPOCH", "0"),
    )


def _number(env: Mapping[str, str], name: str, default: float, whole: bool = False, least: float = 0.0) -> float:
    """A number from the environment, checked: a bad value is a usage error naming the variable."""
    text = env.get(name, "").strip()
    if not text:
        return default
    kind = "a whole number" if whole else "a number"
    try:
        value = float(int(text)) if whole else float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < least or value > 1e15:
        raise UsageError(f"{name} must be {kind} of at least {least:g}, not {text[:40]!r}",
                         hint=f"unset {name} to use the default ({int(default) if whole else f'{default:g}'})")
    return value


_registered: set[str] = set()


def register_secret(value: str | None) -> None:
    """A secret found elsewhere than the environment (a saved token): mask it too."""
    if value and len(value) >= 4:
        _registered.add(value)


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Token values present in the environment (or registered), to mask wherever text leaves the process."""
    env = os.environ if env is None else env
    found = {v for k in SECRET_ENV_VARS if len(v := env.get(k, "")) >= 4} | _registered
    return sorted(found, key=len, reverse=True)


def mask_secrets(text: str, env: Mapping[str, str] | None = None) -> str:
    from urllib.parse import quote

    for value in secret_values(env):
        text = text.replace(value, "***")
        encoded = quote(value, safe="")
        if encoded != value:
            text = text.replace(encoded, "***")
    return text
