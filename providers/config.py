"""Keys, base URLs and user-defined gateways: everything secret or local stays out of workflows.

Lookup order for a provider's key (the preset's key owner, e.g. `openai_hk` for all openai-hk presets):
  1. the environment variable BANANA_<OWNER>_API_KEY (BANANA_GOOGLE_API_KEY, BANANA_FAL_API_KEY, ...);
  2. the conventional names where one exists (GEMINI_API_KEY then GOOGLE_API_KEY for google, FAL_KEY for fal);
  3. keys.json in the config folder: {"google": "AIza...", "fal": "..."}.

The config folder is BANANA_CONFIG_DIR if set, else `<ComfyUI>/user/nano_banana_bridge/` (set by the
node layer at load; deliberately beside, not inside, `user/default/`, which ComfyUI serves over
HTTP), else `~/.nano_banana_bridge/`. It also holds providers.json for custom gateways and per-provider
settings. Per-provider environment overrides: BANANA_<ID>_BASE_URL, _CONCURRENCY, _TIMEOUT,
_MAX_WAIT, and BANANA_<ID>_<OPTION> for any option the preset declares (e.g. BANANA_EVOLINK_RATIO_FIELD).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

from .catalog import PRESETS, ProviderSpec, custom_provider_from_dict
from .errors import ConfigError, MissingKey
from .redaction import register_secret

log = logging.getLogger("nano_banana_bridge")

KEYS_FILE = "keys.json"
PROVIDERS_FILE = "providers.json"

_state_lock = threading.Lock()
_comfy_user_dir: Path | None = None


def set_comfy_user_dir(path: str | os.PathLike) -> None:
    """Called by the node layer with folder_paths.get_user_directory()."""
    global _comfy_user_dir
    with _state_lock:
        _comfy_user_dir = Path(path)


def config_dir() -> Path:
    override = os.environ.get("BANANA_CONFIG_DIR")
    if override:
        return Path(override).expanduser()
    if _comfy_user_dir is not None:
        return _comfy_user_dir / "nano_banana_bridge"
    return Path.home() / ".nano_banana_bridge"


def env_name(provider_id: str, suffix: str) -> str:
    return f"BANANA_{provider_id.upper().replace('-', '_')}_{suffix}"


def _read_json(path: Path) -> Any:
    try:
        with path.open("r", encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        # Never echo the file's content: it may hold keys.
        raise ConfigError(f"Could not read {path}: {type(exc).__name__} at {getattr(exc, 'lineno', '?')}:{getattr(exc, 'colno', '?')}.", hint="Fix the JSON syntax (a trailing comma is the usual culprit).") from None


def ensure_keys_file() -> Path:
    """Create an empty keys file readable only by its owner, so users can fill it in safely."""
    path = config_dir() / KEYS_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write("{\n}\n")
        elif os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s is readable by other users; run: chmod 600 '%s'", path, path)
    except OSError as exc:
        log.warning("could not create %s: %s", path, exc)
    return path


def _keys_from_file() -> dict[str, str]:
    data = _read_json(config_dir() / KEYS_FILE)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{config_dir() / KEYS_FILE} must hold a JSON object like {{\"google\": \"...\"}}.")
    return {str(k).lower(): str(v) for k, v in data.items() if isinstance(v, str) and v.strip()}


def api_key_for(spec: ProviderSpec) -> str:
    owner = spec.key_owner
    candidates = [env_name(owner, "API_KEY"), *spec.key_env]
    for name in candidates:
        value = os.environ.get(name, "").strip()
        if value:
            register_secret(value)
            return value
    value = _keys_from_file().get(owner, "").strip()
    if value:
        register_secret(value)
        return value
    raise MissingKey(f"No API key for '{spec.display_name}'.", provider=spec.id, hint=key_hint(spec, missing=True))


def key_hint(spec: ProviderSpec, *, missing: bool = False) -> str:
    """Where this preset's key is read from: its key owner's variable(s) and keys-file entry.

    Presets of one reseller share a key (openai_hk_chat reads BANANA_OPENAI_HK_API_KEY and "openai_hk").
    """
    owner = spec.key_owner
    where = " or ".join([env_name(owner, "API_KEY"), *spec.key_env])
    help_line = f" Get a key at {spec.key_help}." if spec.key_help else ""
    lead = "Set" if missing else f"Check the key for '{spec.display_name}': it may be wrong, revoked, or lack access to this model. Set"
    return (
        f"{lead} the environment variable {where} before starting ComfyUI, or add "
        f"\"{owner}\": \"<your key>\" to {config_dir() / KEYS_FILE}.{help_line} "
        "Keys are never stored in workflows."
    )


def has_key(spec: ProviderSpec) -> bool:
    """Whether a key is configured, without saying what it is."""
    try:
        api_key_for(spec)
        return True
    except MissingKey:
        return False


def _custom_file() -> Mapping[str, Any]:
    data = _read_json(config_dir() / PROVIDERS_FILE)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{config_dir() / PROVIDERS_FILE} must hold a JSON object with 'providers' and/or 'settings'.")
    return data


def _apply_settings(spec: ProviderSpec, settings: Mapping[str, Any]) -> ProviderSpec:
    changes: dict[str, Any] = {}
    env = os.environ
    base_url = env.get(env_name(spec.id, "BASE_URL")) or settings.get("base_url")
    if base_url:
        changes["base_url"] = str(base_url).rstrip("/")
    for field_name, suffix, cast in (("concurrency", "CONCURRENCY", int), ("read_timeout", "TIMEOUT", float), ("max_wait", "MAX_WAIT", float)):
        raw = env.get(env_name(spec.id, suffix)) or settings.get(field_name if field_name != "read_timeout" else "timeout")
        if raw not in (None, ""):
            try:
                changes[field_name] = cast(raw)
            except ValueError:
                raise ConfigError(f"{env_name(spec.id, suffix)} must be a number, got {raw!r}.") from None
    options = dict(spec.options)
    options.update(settings.get("options") or {})
    for option in spec.options:
        raw = env.get(env_name(spec.id, option.upper()))
        if raw is not None:
            options[option] = raw
    if options != dict(spec.options):
        changes["options"] = options
    return replace(spec, **changes) if changes else spec


def all_providers() -> list[ProviderSpec]:
    """Presets, then the user's custom gateways, with overrides from the environment and providers.json."""
    data = _custom_file()
    settings = data.get("settings") or {}
    specs = list(PRESETS)
    known = {s.id for s in specs}
    for entry in data.get("providers") or []:
        spec = custom_provider_from_dict(entry)
        if spec.id in known:
            raise ConfigError(f"Custom provider id '{spec.id}' is already taken by a preset.", hint="Pick another id in providers.json.")
        known.add(spec.id)
        specs.append(spec)
    return [_apply_settings(s, settings.get(s.id) or {}) for s in specs]


def get_provider(provider_id: str) -> ProviderSpec:
    for spec in all_providers():
        if spec.id == provider_id:
            return spec
    ids = ", ".join(s.id for s in all_providers())
    raise ConfigError(f"Unknown provider '{provider_id}'.", hint=f"Known providers: {ids}. Custom gateways go in {config_dir() / PROVIDERS_FILE}.")
