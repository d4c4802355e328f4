"""Settings resolved once, in one place: command-line flag > environment > default.

Library functions take explicit parameters; only the CLI calls ``resolve_settings``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

DEFAULT_MODELS_DIR = Path("~/.cache/tea/models")
SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GITHUB_TOKEN", "GH_TOKEN")
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    models_dir: Path
    offline: bool
    tea_model_path: str | None
    appdir: str | None
    hf_endpoint: str | None
    debug: bool
    hf_token: str | None = None
    retries: int = 6
    retry_backoff: float = 0.5
    stall_timeout: float = 30.0
    parallel_min: int = 256 * 1024 * 1024


def env_flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in _TRUE


def resolve_settings(cache_dir: Path | None = None, offline: bool | None = None, debug: bool = False,
                     env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    models_dir = cache_dir or (Path(env["TEA_MODELS_DIR"]) if env.get("TEA_MODELS_DIR") else DEFAULT_MODELS_DIR)
    if offline is None:
        offline = env_flag(env, "TEA_OFFLINE") or env_flag(env, "HF_HUB_OFFLINE")
    endpoint = env.get("HF_ENDPOINT") or None
    return Settings(
        models_dir=models_dir.expanduser(),
        offline=offline,
        tea_model_path=env.get("TEA_MODEL_PATH") or None,
        appdir=env.get("APPDIR") or None,
        hf_endpoint=endpoint.rstrip("/") if endpoint else None,
        debug=debug or env_flag(env, "TEADIST_DEBUG"),
        hf_token=env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None,
        retries=_number(env, "TEADIST_RETRIES", 6, int),
        retry_backoff=_number(env, "TEADIST_RETRY_BACKOFF", 0.5, float),
        stall_timeout=_number(env, "TEADIST_STALL_TIMEOUT", 30.0, float),
        parallel_min=_number(env, "TEADIST_PARALLEL_MIN", 256 * 1024 * 1024, int),
    )


def _number(env: Mapping[str, str], name: str, default: T, kind: Callable[[str], T]) -> T:
    try:
        return kind(env[name]) if env.get(name) else default
    except ValueError:
        return default


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Token values present in the environment, to mask wherever text leaves the process."""
    env = os.environ if env is None else env
    return [v for k in SECRET_ENV_VARS if len(v := env.get(k, "")) >= 4]


def mask_secrets(text: str, env: Mapping[str, str] | None = None) -> str:
    for value in secret_values(env):
        text = text.replace(value, "***")
    return text
