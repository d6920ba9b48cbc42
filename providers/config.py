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

import ipaddress
import json
import logging
import os
import secrets
import stat
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from .catalog import GOOGLE_OAUTH, PRESETS, ProviderSpec, custom_provider_from_dict
from .engine.auth import host_matches, origin
from .errors import ConfigError, MissingKey
from .redaction import redact, register_secret

log = logging.getLogger("nano_banana_bridge")

KEYS_FILE = "keys.json"
PROVIDERS_FILE = "providers.json"
STORE_SECRET_FILE = "store.secret"  # authenticates the result cache and job journal in the output folder
CONFIG_FOLDER = "nano_banana_bridge"

_state_lock = threading.Lock()
_comfy_user_dir: Path | None = None
_comfy_served_dirs: tuple[Path, ...] = ()
_warned: set[str] = set()  # messages already logged once


def set_comfy_user_dir(path: str | os.PathLike, served: tuple[str | os.PathLike, ...] = ()) -> None:
    """Called by the node layer with folder_paths.get_user_directory() and the folders ComfyUI serves
    over HTTP (output, input, temp): a config folder inside any of those is refused."""
    global _comfy_user_dir, _comfy_served_dirs
    with _state_lock:
        _comfy_user_dir = Path(path)
        _comfy_served_dirs = tuple(Path(p) for p in served)


def warn_once(message: str, *args: Any) -> None:
    text = message % args if args else message
    with _state_lock:
        if text in _warned:
            return
        _warned.add(text)
    log.warning("%s", text)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _served_by_comfyui(folder: Path) -> str | None:
    """Why ComfyUI would hand files in `folder` to any web page that reaches it, or None."""
    if _comfy_user_dir is not None and _inside(folder, _comfy_user_dir):
        parts = folder.resolve().relative_to(_comfy_user_dir.resolve()).parts
        # user/<id>/ is served by /userdata for every user id; our own folder and system users ("__...") are not.
        if parts and parts[0] != CONFIG_FOLDER and not parts[0].startswith("__"):
            return f"ComfyUI serves user/{parts[0]}/ over HTTP (/api/userdata)"
    for served in _comfy_served_dirs:
        if _inside(folder, served):
            return f"ComfyUI serves its {served.name} folder over HTTP (/view, /upload)"
    return None


def config_dir() -> Path:
    override = os.environ.get("BANANA_CONFIG_DIR")
    if override:
        folder = Path(override).expanduser()
        why = _served_by_comfyui(folder)
        if why:
            raise ConfigError(
                f"BANANA_CONFIG_DIR points inside a folder ComfyUI serves to web pages: {why}, so anyone who can reach ComfyUI could read the keys there.",
                hint=f"Use <ComfyUI>/user/{CONFIG_FOLDER}/ (the default: unset BANANA_CONFIG_DIR) or a folder outside ComfyUI.",
            )
        return folder
    if _comfy_user_dir is not None:
        folder = _comfy_user_dir / CONFIG_FOLDER
        # ComfyUI started with its user folder inside one it serves (--user-directory under --output-directory):
        # the default folder would hand keys.json and store.secret to any page, through /view.
        why = _served_by_comfyui(folder)
        if why:
            raise ConfigError(
                f"The pack's config folder <ComfyUI>/user/{CONFIG_FOLDER}/ lies inside a folder ComfyUI serves to web pages: {why}, "
                "so anyone who can reach ComfyUI could read the keys there.",
                hint="Set BANANA_CONFIG_DIR to a folder outside ComfyUI's output, input and temp folders (or move ComfyUI's user folder out of them).",
            )
        return folder
    return Path.home() / f".{CONFIG_FOLDER}"


def display_path(path: Path) -> str:
    """A config file's location as users know it, without the absolute path (user names, home folders)."""
    override = os.environ.get("BANANA_CONFIG_DIR")
    candidates: list[tuple[Path, str]] = []
    if override:
        candidates.append((Path(override).expanduser(), "$BANANA_CONFIG_DIR"))
    if _comfy_user_dir is not None:
        candidates.append((_comfy_user_dir, "<ComfyUI>/user"))
    candidates.append((Path.home(), "~"))
    for folder, label in candidates:
        try:
            return str(Path(label) / path.relative_to(folder)).replace(os.sep, "/")
        except ValueError:
            continue
    return path.name


def env_name(provider_id: str, suffix: str) -> str:
    return f"BANANA_{provider_id.upper().replace('-', '_')}_{suffix}"


def _read_json(path: Path) -> Any:
    try:
        with path.open("r", encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        # Never echo the file's content: it may hold keys. The decoder's own message names only the syntax.
        raise ConfigError(
            f"{display_path(path)} is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}.",
            hint="Fix the JSON syntax there (a trailing comma after the last entry is the usual culprit).",
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Could not read {display_path(path)}: {type(exc).__name__}.", hint="Check the file's permissions and that it is UTF-8 text.") from None


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


def _keys_from_file() -> dict[str, list[str]]:
    """Each key owner's keys from the keys file: a string, or a list of strings used in turn."""
    path = config_dir() / KEYS_FILE
    data = _read_json(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{display_path(path)} must hold a JSON object like {{\"google\": \"...\"}} (or a list of keys: {{\"google\": [\"...\", \"...\"]}}).")
    keys: dict[str, list[str]] = {}
    for owner, value in data.items():
        listed = value if isinstance(value, list) else [value]
        found = [str(item).strip() for item in listed if isinstance(item, str) and item.strip()]
        if found:
            keys[str(owner).lower()] = found
    return keys


def _checked_key(value: str, owner: str, where: str, header: bool = True) -> str:
    """A key as loaded; refused (without showing it) unless it is printable ASCII without spaces.

    header=False: a credential that never goes into a header itself (a Vertex service-account key's
    path or JSON, exchanged for a token). A path is not a secret (redacting it would hide every
    path that shares its prefix); the key file's private key is registered when it is read."""
    if header or value.lstrip().startswith("{"):
        register_secret(value)
    if header and not all("!" <= ch <= "~" for ch in value):
        raise ConfigError(
            f"The API key for '{owner}' in {where} contains a space, a line break or a non-ASCII character.",
            hint="Paste the key again as plain text (editors and web pages sometimes add smart quotes or invisible characters).",
        )
    return value


MAX_KEYS = 9  # BANANA_<ID>_API_KEY, then _API_KEY_2 ... _API_KEY_9


def api_keys_for(spec: ProviderSpec) -> list[str]:
    """Every key for the provider, in the order they are used: the first, then the next when one
    is rate-limited or out of quota. From the environment (BANANA_<ID>_API_KEY, _API_KEY_2, ...,
    or a conventional name) if any is set there, else from the keys file (a string or a list)."""
    owner = spec.key_owner
    primary = [env_name(owner, "API_KEY"), *spec.key_env]
    extra = [env_name(owner, f"API_KEY_{n}") for n in range(2, MAX_KEYS + 1)]
    first = next(((name, os.environ[name].strip()) for name in primary if os.environ.get(name, "").strip()), None)
    from_env = ([first] if first else []) + [(name, os.environ[name].strip()) for name in extra if os.environ.get(name, "").strip()]
    if from_env:
        return [_checked_key(value, owner, f"the environment variable {name}", header=spec.auth != GOOGLE_OAUTH) for name, value in from_env]
    where = display_path(config_dir() / KEYS_FILE)
    listed = _keys_from_file().get(owner, [])[:MAX_KEYS]
    if listed:
        return [_checked_key(value, owner, where, header=spec.auth != GOOGLE_OAUTH) for value in listed]
    raise MissingKey(f"No API key for '{spec.display_name}'.", provider=spec.id, hint=key_hint(spec, missing=True))


# Where a user of the UI sets a key (web/js: the sidebar tab with the key icon).
KEYS_TAB = "Nano Banana keys tab (key icon in ComfyUI's sidebar)"


def key_hint(spec: ProviderSpec, *, missing: bool = False) -> str:
    """Where this preset's key is read from: its key owner's variable(s) and keys-file entry.

    Presets of one reseller share a key (openai_hk_chat reads BANANA_OPENAI_HK_API_KEY and "openai_hk").
    """
    owner = spec.key_owner
    where = " or ".join([env_name(owner, "API_KEY"), *spec.key_env])
    help_line = f" Get a key at {spec.key_help}." if spec.key_help else ""
    lead = "Paste it" if missing else f"Check the key for '{spec.display_name}': it may be wrong, revoked, or lack access to this model. Paste a new one"
    return (
        f"{lead} in the {KEYS_TAB} (used by the next run, no restart), or set the environment variable {where} before starting ComfyUI, or add "
        f"\"{owner}\": \"<your key>\" to {display_path(config_dir() / KEYS_FILE)}.{help_line} "
        "Keys are never stored in workflows."
    )


def api_key_for(spec: ProviderSpec) -> str:
    """The provider's first key (see api_keys_for)."""
    return api_keys_for(spec)[0]


def has_key(spec: ProviderSpec) -> bool:
    """Whether a key is configured, without saying what it is."""
    try:
        api_key_for(spec)
        return True
    except MissingKey:
        return False


def _custom_file() -> Mapping[str, Any]:
    path = config_dir() / PROVIDERS_FILE
    data = _read_json(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{display_path(path)} must hold a JSON object with 'providers' and/or 'settings'.")
    return data


def user_settings() -> Mapping[str, Any]:
    """providers.json as a whole (custom gateways, per-provider settings, spend limits, ledger options)."""
    return _custom_file()


def _apply_settings(spec: ProviderSpec, settings: Mapping[str, Any]) -> ProviderSpec:
    changes: dict[str, Any] = {}
    env = os.environ
    base_url = env.get(env_name(spec.id, "BASE_URL")) or settings.get("base_url")
    if base_url:
        changes["base_url"] = str(base_url).rstrip("/")
        if spec.auth_hosts and not _on_own_hosts(spec, changes["base_url"]):
            # Another server (a reseller, a proxy) with its own key: the preset's extra hosts are the
            # original provider's (EvoLink's file API), not that server's, so its key is not sent there.
            changes["auth_hosts"] = ()
    if isinstance(settings.get("auth_hosts"), list):  # the user says which https hosts also take this key
        changes["auth_hosts"] = tuple(str(host) for host in settings["auth_hosts"] if isinstance(host, str))
    for field_name, suffix, cast in (("concurrency", "CONCURRENCY", int), ("read_timeout", "TIMEOUT", float), ("max_wait", "MAX_WAIT", float), ("result_lifetime", "RESULT_LIFETIME", float)):
        raw = env.get(env_name(spec.id, suffix)) or settings.get(field_name if field_name != "read_timeout" else "timeout")
        if raw not in (None, ""):
            try:
                changes[field_name] = cast(raw)
            except ValueError:
                raise ConfigError(f"{env_name(spec.id, suffix)} must be a number, got {raw!r}.") from None
    if isinstance(settings.get("rate_limit_may_bill"), bool):  # the user knows how their gateway bills a 429
        changes["rate_limit_may_bill"] = settings["rate_limit_may_bill"]
    options = dict(spec.options)
    options.update(settings.get("options") or {})
    for option in spec.options:
        raw = env.get(env_name(spec.id, option.upper()))
        if raw is not None:
            options[option] = raw
    if options != dict(spec.options):
        changes["options"] = options
    return replace(spec, **changes) if changes else spec


def _on_own_hosts(spec: ProviderSpec, url: str) -> bool:
    """Whether `url` is on the host of the spec's own base URL or on one of its auth_hosts."""
    target, own = origin(url), origin(spec.base_url)
    if target is None:
        return False
    return (own is not None and target[1] == own[1]) or any(host_matches(target[1], pattern) for pattern in spec.auth_hosts)


def all_providers() -> list[ProviderSpec]:
    """Presets, then the user's custom gateways, with overrides from the environment and providers.json."""
    data = _custom_file()
    where = display_path(config_dir() / PROVIDERS_FILE)
    settings = data.get("settings") or {}
    entries = data.get("providers") or []
    if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
        raise ConfigError(f"In {where}, 'settings' must map provider ids to objects, like {{\"google\": {{\"concurrency\": 2}}}}.")
    if not isinstance(entries, list):
        raise ConfigError(f"In {where}, 'providers' must be a list of gateway objects.", hint="See the README, 'Custom gateways', for the format.")
    specs = list(PRESETS)
    # Ids are compared as their environment variables spell them: a gateway named 'openai-hk' would
    # otherwise read BANANA_OPENAI_HK_API_KEY, the openai_hk preset's key, and send it to its own URL.
    known = {env_name(name, ""): name for s in specs for name in (s.id, s.key_owner)}
    for entry in entries:
        spec = _checked_shape(where, lambda entry=entry: custom_provider_from_dict(entry))
        taken = known.get(env_name(spec.id, ""))
        if taken is not None:
            raise ConfigError(
                f"Custom provider id '{spec.id}' is already taken by '{taken}' (both would use {env_name(spec.id, 'API_KEY')}).",
                hint="Pick another id in providers.json; a gateway's key is BANANA_<ID>_API_KEY or \"<id>\" in keys.json.",
            )
        known[env_name(spec.id, "")] = spec.id
        specs.append(spec)
    specs = [_checked_shape(where, lambda s=s: _apply_settings(s, settings.get(s.id) or {}), s.id) for s in specs]
    for spec in specs:
        _register_url_credentials(spec.base_url)
        _warn_plain_http(spec)
    return specs


def _register_url_credentials(url: str) -> None:
    """A base URL's `user:password@` (a gateway behind basic auth) is a credential like the key: it is
    redacted wherever the URL is shown (a dry run, the refusal listing allowed origins, the key test)."""
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return
    for value in (user, password):
        if value:
            register_secret(value)


def _checked_shape(where: str, build: Any, provider_id: str | None = None) -> Any:
    """A value of the wrong JSON type in providers.json is a ConfigError naming the file, not a TypeError."""
    try:
        return build()
    except ConfigError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        about = f" for '{provider_id}'" if provider_id else ""
        raise ConfigError(f"In {where}, a value{about} has the wrong type ({type(exc).__name__}: {exc}).", hint="See the README, 'Custom gateways' and 'Settings', for the format.") from None


def schema_providers() -> list[ProviderSpec]:
    """The providers for the node's schema and the frontend: a broken config file never removes the node.

    On any error the built-in presets stand in (logged once); running the node then raises the
    ConfigError, naming the file and line.
    """
    try:
        return all_providers()
    except Exception as exc:  # noqa: BLE001 - whatever is wrong, the node must stay in ComfyUI's list
        warn_once("Nano Banana Bridge: using the built-in provider presets: %s", redact(exc))
        return list(PRESETS)


def _warn_plain_http(spec: ProviderSpec) -> None:
    parts = urlsplit(spec.base_url)
    if parts.scheme != "http":
        return
    host = (parts.hostname or "").lower()
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost" or host.endswith(".localhost")
    if not loopback:
        warn_once("Nano Banana Bridge: provider '%s' uses plain http:// to %s: its key and your prompts cross the network unencrypted; use https://.", spec.id, host)


def store_secret() -> bytes:
    """The per-install secret that authenticates cache and journal entries (created on first use, mode 600).

    Files in ComfyUI's output folder can be written by anyone who reaches ComfyUI (its upload
    route), so the store trusts only entries carrying an HMAC made with this secret.
    """
    with _secret_lock:
        return _store_secret(config_dir() / STORE_SECRET_FILE)


_secret_lock = threading.Lock()


def _store_secret(path: Path) -> bytes:
    try:
        raw = path.read_bytes().strip()
        if len(raw) >= 32:
            if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                # Whoever reads it can make cache and journal entries this install trusts.
                warn_once("%s is readable by other users; run: chmod 600 '%s'", path, path)
            return raw
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode()
    # Written whole under a temporary name, then linked into place: the final name never holds a
    # half-written secret that another thread (a batch's parallel cache lookups) could read.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".store.secret-")  # mode 600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(value + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if the name exists: the first secret made wins
        except FileExistsError:
            raw = path.read_bytes().strip()
            if len(raw) >= 32:
                return raw
            raise ConfigError(f"{display_path(path)} is damaged (too short).", hint="Delete it; a new one is created (cached results made before then run again).") from None
        except OSError:  # a file system without hard links: atomic all the same (threads are serialised by the lock)
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return value


def get_provider(provider_id: str) -> ProviderSpec:
    for spec in all_providers():
        if spec.id == provider_id:
            return spec
    ids = ", ".join(s.id for s in all_providers())
    raise ConfigError(f"Unknown provider '{provider_id}'.", hint=f"Known providers: {ids}. Custom gateways go in {display_path(config_dir() / PROVIDERS_FILE)}.")
