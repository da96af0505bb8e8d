"""Settings: TOML file, then environment overrides, validated into frozen Structs.

Pure: `load_settings(path, env)` reads only what it is given, so tests pass their own
environment and nothing is read at import time.

Environment overrides use `GATEWAY__<SECTION>__<FIELD>` (list items by index, e.g.
`GATEWAY__MODELS__0__DEVICE=cuda`); values are parsed as TOML values when they can be
(`true`, `8080`, `["a"]`) and taken as strings otherwise. `GATEWAY_API_KEY` adds a
plaintext development key named `env`. `auth.key_file` may start with `~` or
`$XDG_STATE_HOME` (`~/.local/state` where unset, as the XDG base directory spec says), both
read from `env`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

ENV_PREFIX = "GATEWAY__"
ENV_API_KEY = "GATEWAY_API_KEY"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "default.toml"
DEFAULT_KEY_FILE = "$XDG_STATE_HOME/llm2vec-gateway/keys.json"

PoolingMode = Literal["mean", "weighted_mean", "eos_token", "last_token", "bos_token"]
ModelKind = Literal["llm2vec", "llm2vec-gen", "encoder"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
OnOverflow = Literal["truncate", "error", "chunk"]
LogFormat = Literal["text", "json"]
OnStorageError = Literal["open", "closed"]
WorkerKind = Literal["process", "thread"]
BatchWorker = Literal["auto", "background", "shared"]


class ConfigError(Exception):
    """Settings that cannot be used; the message names the field's path."""


class _Base(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    pass


class ServerSettings(_Base, kw_only=True, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 16 * 1024 * 1024
    # HTTP framing (app.framing): request line + headers over this get 431; a request whose
    # headers (body) are not all sent within the timeout is cut off; an idle connection closes.
    max_header_bytes: int = 16 * 1024
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 60.0
    keep_alive_timeout_seconds: float = 5.0
    log_level: str = "info"
    # "json": every log line is one JSON object (the request line with its fields).
    log_format: LogFormat = "text"
    # On SIGTERM/SIGINT: /ready answers 503 at once and requests are still served for
    # drain_seconds (so balancers stop routing here first); the process exits within
    # shutdown_timeout_seconds of the signal, counted from it.
    drain_seconds: float = 5.0
    shutdown_timeout_seconds: float = 30.0


class ApiKey(_Base, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: str
    sha256: str | None = None
    # Plaintext keys are for development only; prefer sha256 digests in files.
    key: str | None = None
    # Per-key overrides of [limits] (0 = unlimited), and the served names it may use (all if empty).
    rpm: int | None = None
    tpm: int | None = None
    models: list[str] = []


class AuthSettings(_Base, kw_only=True, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    keys: list[ApiKey] = []
    # Managed keys (`python -m app keys ...`); re-read when it changes. "" = none. A leading
    # $XDG_STATE_HOME or ~ is expanded (expand_path) by load_settings and again where used.
    key_file: str = DEFAULT_KEY_FILE
    key_file_poll_seconds: float = 1.0
    # Guards /metrics when metrics.port = 0 (plaintext for development only).
    admin_key_sha256: str | None = None
    admin_key: str | None = None


class ApiSettings(_Base, kw_only=True, frozen=True, forbid_unknown_fields=True):
    max_inputs: int = 2048
    max_request_tokens: int = 300_000
    # One input longer than this (in characters, token ids counted once decoded) gets 400.
    # Over-long text is cut to max_length cheaply whatever its size, so the default lets
    # through any input a body under server.max_body_bytes can hold.
    max_input_chars: int = 16 * 1024 * 1024
    # How token-id input (what LangChain sends) is read: a tiktoken encoding name, or
    # "native" for the served model's own token ids.
    token_ids: str = "cl100k_base"


class EngineSettings(_Base, kw_only=True, frozen=True, forbid_unknown_fields=True):
    max_batch_size: int = 32
    max_batch_tokens: int = 16384
    # With several clients active, how long a batch may wait for their next requests.
    max_batch_wait_ms: float = 5.0
    # While interactive-sized requests are about, a forward pass is planned to last about
    # this long (its token cap learnt from the model's speed); 0 = always the full budget.
    max_batch_ms: float = 30.0
    # Small requests seed batches before big ones; a request none of whose inputs has gone
    # into a forward pass for this long seeds the next one, whatever else is queued.
    max_unserved_ms: float = 2000.0
    # Backpressure: past either bound a request gets 503 with Retry-After at once.
    max_queue_requests: int = 512
    max_queue_tokens: int = 1_000_000
    # 0 keeps torch's default (one thread per core); set per model worker.
    torch_threads: int = 0
    # "process": each model runs in worker processes that own the weights (the gateway
    # process keeps HTTP, tokenization and batching); "thread": in a thread of this process.
    workers: WorkerKind = "process"


class Alias(_Base, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: str
    instruction: str = ""


class ModelSettings(_Base, kw_only=True, frozen=True, forbid_unknown_fields=True):
    name: str
    base_model: str
    kind: ModelKind = "llm2vec"
    adapters: list[str] = []
    # A hub revision (branch, tag or commit) for base_model and adapters; "" = the default branch.
    revision: str = ""
    pooling: PoolingMode = "mean"
    max_length: int = 512
    on_overflow: OnOverflow = "truncate"
    dtype: DType = "auto"
    device: str = "auto"
    # One worker per device, each with its own copy of the weights, fed from one queue:
    # a list of devices (["cuda:0", "cuda:1"]) or a count (on CUDA cuda:0 .. cuda:N-1,
    # on CPU N workers on the CPU), or "auto": one worker, and on a CPU host a second one
    # where memory and cores allow (app.engine.workers.host).
    devices: list[str] | int | Literal["auto"] = 1
    # On CUDA: replay small forwards from captured CUDA graphs (app/models/cuda_graphs.py).
    cuda_graphs: bool = True
    normalize: bool = True
    instruction: str = ""
    aliases: list[Alias] = []
    owned_by: str = "llm2vec-gateway"


class LimitsSettings(_Base, kw_only=True, frozen=True, forbid_unknown_fields=True):
    # Per key, counted over `window_seconds`; 0 = unlimited. Keys may override them.
    # Unlimited by default: a self-hosted gateway's capacity is its hardware, and a key
    # with no limit is sent no x-ratelimit-* headers.
    rpm: int = 0
    tpm: int = 0
    window_seconds: int = 60
    # "memory://" (this process only) or "redis://[:password@]host:port[/db]" (shared by replicas).
    storage: str = "memory://"
    # When the storage cannot be reached: "open" serves unlimited, "closed" answers 503.
    on_storage_error: OnStorageError = "open"
    storage_timeout_seconds: float = 0.5
    # Prefix of the counters' keys in Redis: deployments sharing one Redis keep apart by it.
    key_prefix: str = "GATEWAY"


class MetricsSettings(_Base, kw_only=True, frozen=True, forbid_unknown_fields=True):
    enabled: bool = False
    host: str = "127.0.0.1"
    # Its own port; 0 serves /metrics on the API port, guarded by auth.admin_key_sha256.
    port: int = 9464


class BatchSettings(_Base, kw_only=True, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    # "" = the per-user data directory ($XDG_DATA_HOME or ~/.local/share)/llm2vec-gateway.
    db_path: str = ""
    files_dir: str = ""
    # OpenAI's upload limits for batch input files.
    max_file_bytes: int = 200 * 1024 * 1024
    max_file_lines: int = 50_000
    # Inputs the runner puts in flight at once (one commit per chunk).
    chunk_inputs: int = 32
    # Batch work runs below interactive requests: "background" = a worker process per model
    # of its own (its own copy of the weights) at the lowest CPU priority, which the OS
    # preempts for interactive work; "shared" = the model's workers, only while no
    # interactive input is queued (no extra copy: for one big GPU model); "auto" = background
    # where the model's workers run on the CPU, shared where they run on CUDA.
    worker: BatchWorker = "auto"
    # Torch threads of the background worker.
    worker_threads: int = 1
    # No longer used (the runner waited for the queue to empty before each chunk; the
    # queue's background lane replaced that). Accepted so older configs still load.
    max_yield_ms: float = 200.0


class CacheSettings(_Base, kw_only=True, frozen=True, forbid_unknown_fields=True):
    enabled: bool = False
    # "memory" (this process) or "redis://[:password@]host:port[/db]" (shared by replicas).
    storage: str = "memory"
    max_entries: int = 100_000
    # Redis only: entries expire after this many seconds (0 = never; Redis's maxmemory bounds it).
    ttl_seconds: int = 0
    timeout_seconds: float = 0.25
    key_prefix: str = "GATEWAY:emb:"


class Settings(_Base, kw_only=True, frozen=True, forbid_unknown_fields=True):
    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    api: ApiSettings = ApiSettings()
    engine: EngineSettings = EngineSettings()
    models: list[ModelSettings] = []
    limits: LimitsSettings = LimitsSettings()
    metrics: MetricsSettings = MetricsSettings()
    batch: BatchSettings = BatchSettings()
    cache: CacheSettings = CacheSettings()


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_override(data: dict[str, Any], path: list[str], value: Any, env_name: str) -> None:
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{env_name}: no list item {part!r}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        else:
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})


def _env_overrides(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if path:
            _apply_override(data, path, _parse_env_value(env[name]), name)
    if env.get(ENV_API_KEY):
        auth = data.setdefault("auth", {})
        auth.setdefault("keys", []).append({"name": "env", "key": env[ENV_API_KEY]})


def _check(settings: Settings) -> None:
    names: set[str] = set()
    for i, model in enumerate(settings.models):
        for name in [model.name, *(a.name for a in model.aliases)]:
            if name in names:
                raise ConfigError(f"models[{i}]: the name {name!r} is served twice")
            names.add(name)
        if model.max_length < 1:
            raise ConfigError(f"models[{i}].max_length: must be at least 1")
        if model.devices == [] or (isinstance(model.devices, int) and model.devices < 1):
            raise ConfigError(f"models[{i}].devices: at least one device (or a count of at least 1)")
        if model.kind == "encoder" and (model.adapters or model.pooling != "mean"):
            raise ConfigError(f"models[{i}]: encoder models take no adapters and only mean pooling")
        if model.kind == "llm2vec-gen" and (model.adapters or model.pooling != "mean"):
            raise ConfigError(
                f"models[{i}]: llm2vec-gen models take no adapters (the checkpoint holds its own) and "
                "no pooling (the checkpoint's encoding_mode decides it)"
            )
    for i, key in enumerate(settings.auth.keys):
        if (key.sha256 is None) == (key.key is None):
            raise ConfigError(f"auth.keys[{i}]: give exactly one of sha256 or key")
        if key.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", key.sha256):
            raise ConfigError(f"auth.keys[{i}].sha256: expected 64 lowercase hex digits")
    eng = settings.engine
    if min(eng.max_batch_size, eng.max_batch_tokens, eng.max_queue_requests, eng.max_queue_tokens) < 1:
        raise ConfigError("engine: batch and queue bounds must be at least 1")
    if not 0 <= eng.max_batch_wait_ms <= 1000:
        raise ConfigError("engine.max_batch_wait_ms: must be between 0 and 1000")
    if eng.max_batch_ms < 0 or eng.max_unserved_ms <= 0:
        raise ConfigError("engine: max_batch_ms must be 0 or more and max_unserved_ms more than 0")
    server = settings.server
    if not 1024 <= server.max_header_bytes <= 1024 * 1024:
        raise ConfigError("server.max_header_bytes: must be between 1024 and 1048576")
    timeouts = [server.header_timeout_seconds, server.body_timeout_seconds, server.keep_alive_timeout_seconds]
    if min(timeouts) <= 0:
        raise ConfigError("server: header, body and keep-alive timeouts must be more than 0")
    if min(settings.api.max_inputs, settings.api.max_request_tokens, settings.api.max_input_chars) < 1:
        raise ConfigError("api: max_inputs, max_request_tokens and max_input_chars must be at least 1")
    if not 0 <= server.drain_seconds < server.shutdown_timeout_seconds:
        raise ConfigError(
            "server.drain_seconds: must be 0 or more and less than server.shutdown_timeout_seconds"
        )


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (default: config/default.toml), apply `env` overrides, validate."""
    file = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        data: dict[str, Any] = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{file}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: {exc}") from None
    _env_overrides(data, env or {})
    try:
        settings = msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from None
    _check(settings)
    _check_controls(settings)
    _check_batch(settings.batch)
    _check_cache(settings.cache)
    if settings.auth.key_file:
        auth = msgspec.structs.replace(settings.auth, key_file=expand_path(settings.auth.key_file, env or {}))
        settings = msgspec.structs.replace(settings, auth=auth)
    return settings


def expand_path(value: str, env: Mapping[str, str]) -> str:
    """`value` with a leading `$XDG_STATE_HOME` (or `${XDG_STATE_HOME}`) or `~` replaced
    from `env`: XDG_STATE_HOME where set, else ~/.local/state; ~ is env's HOME where set."""
    home = env.get("HOME") or os.path.expanduser("~")
    for variable in ("${XDG_STATE_HOME}", "$XDG_STATE_HOME"):
        if value.startswith(variable):
            state = env.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
            return state + value[len(variable) :]
    if value == "~" or value.startswith("~/"):
        return home + value[1:]
    return value


def _check_cache(cache: CacheSettings) -> None:
    if cache.storage != "memory" and cache.storage.partition("://")[0] not in ("redis", "rediss"):
        raise ConfigError("cache.storage: expected memory, redis://... or rediss://...")
    if cache.max_entries < 1 or cache.ttl_seconds < 0 or cache.timeout_seconds <= 0:
        raise ConfigError("cache: max_entries at least 1, ttl_seconds 0 or more, timeout_seconds above 0")


def _check_batch(batch: BatchSettings) -> None:
    if min(batch.max_file_bytes, batch.max_file_lines, batch.chunk_inputs) < 1:
        raise ConfigError("batch: max_file_bytes, max_file_lines and chunk_inputs must be at least 1")
    if batch.max_yield_ms < 0:
        raise ConfigError("batch.max_yield_ms: must be 0 or more")
    if batch.worker_threads < 1:
        raise ConfigError("batch.worker_threads: must be at least 1")


def _check_controls(settings: Settings) -> None:
    """Key management, rate limits and metrics."""
    auth, limits, metrics = settings.auth, settings.limits, settings.metrics
    for i, key in enumerate(auth.keys):
        if min(key.rpm or 0, key.tpm or 0) < 0:
            raise ConfigError(f"auth.keys[{i}]: rpm and tpm must be 0 (unlimited) or more")
    if auth.admin_key_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", auth.admin_key_sha256):
        raise ConfigError("auth.admin_key_sha256: expected 64 lowercase hex digits")
    if auth.key_file_poll_seconds <= 0:
        raise ConfigError("auth.key_file_poll_seconds: must be more than 0")
    if min(limits.rpm, limits.tpm) < 0:
        raise ConfigError("limits: rpm and tpm must be 0 (unlimited) or more")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", limits.key_prefix):
        raise ConfigError("limits.key_prefix: 1 to 64 letters, digits, '_', '.', ':' or '-'")
    if limits.window_seconds < 1 or limits.storage_timeout_seconds <= 0:
        raise ConfigError("limits: window_seconds must be at least 1 and storage_timeout_seconds above 0")
    if limits.storage.partition("://")[0] not in ("memory", "redis", "rediss"):
        raise ConfigError("limits.storage: expected memory://, redis://... or rediss://...")
    if metrics.enabled and metrics.port == 0 and auth.admin_key_sha256 is None and auth.admin_key is None:
        raise ConfigError("metrics.port: 0 serves /metrics on the API port and needs auth.admin_key_sha256")
    if metrics.enabled and metrics.port == settings.server.port:
        raise ConfigError("metrics.port: must differ from server.port (or be 0 for /metrics on it)")


def masked(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with every secret masked."""
    data: dict[str, Any] = msgspec.to_builtins(settings)
    for key in data["auth"]["keys"]:
        if key.get("key") is not None:
            key["key"] = "***"
    if data["auth"].get("admin_key") is not None:
        data["auth"]["admin_key"] = "***"
    data["limits"]["storage"] = _mask_url_password(data["limits"]["storage"])
    data["cache"]["storage"] = _mask_url_password(data["cache"]["storage"])
    return data


def _mask_url_password(url: str) -> str:
    """redis://user:secret@host -> redis://user:***@host"""
    return re.sub(r"^([a-z+]+://[^/@:]*:)[^/@]*@", r"\1***@", url)
