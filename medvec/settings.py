"""Configuration: every environment variable Medvec reads, typed, with its default and meaning, read into
one immutable `Settings` per process (`get_settings()`) that callers pass down. Nothing else in `medvec/`
reads the environment for configuration."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import (AliasChoices, Field, PrivateAttr, SecretStr, ValidationError, ValidationInfo, field_validator)
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from medvec.home import check_collection_name, collection_home, root_home
from medvec.storage import HomePath, S3Path, is_remote

DEFAULT_HOME = "./medvec_home"
DEFAULT_BATCH_SIZE = 2000
#: Offline default: a random-weights model built locally (no retrieval quality, said wherever it shows).
DEFAULT_MODEL = "tiny-siglip"
DEFAULT_MAX_FILE_BYTES = 2 * 1024 ** 3
#: 50 Mpx: a 7000 x 7000 mammogram fits; a 12000 x 12000 16-bit "PNG bomb" (1.8 GB decoded) does not.
DEFAULT_MAX_PIXELS = 50_000_000


class SettingsError(ValueError):
    """A variable holds a value Medvec cannot use; the message is one line naming the variable, the value
    and what is allowed."""


# The environment `Settings.from_env(environ)` reads instead of os.environ (tests, child configurations).
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("medvec_environ", default=None)


class _EnvSource(EnvSettingsSource):
    def _load_env_vars(self):
        environ = _ENVIRON.get()
        return parse_env_vars(os.environ if environ is None else environ, self.case_sensitive,
                              self.env_ignore_empty, self.env_parse_none_str)


def _var(name: str, default: Any = None, help: str = "", **constraints) -> Any:
    """A field read from the environment variable `name` (an empty value counts as unset)."""
    return Field(default, validation_alias=AliasChoices(name), description=help, **constraints)


class Settings(BaseSettings):
    """Where Medvec keeps its state, which model embeds and how, and how the watchers behave.

    `home` holds WebP files, batch manifests and per-batch records: a folder, or an `s3://` prefix
    (`medvec.storage.S3Path`) so workers on several machines share it; `lancedb_uri` the tables (a folder
    or `s3://`); `source` is what `dagster dev` watches. Secrets are `SecretStr`: never in a repr or a log.
    """

    model_config = SettingsConfigDict(frozen=True, env_ignore_empty=True, case_sensitive=True,
                                      arbitrary_types_allowed=True, extra="ignore", populate_by_name=True)

    # --- where state lives (s3_endpoint_url first: the home's validator uses it) ---
    s3_endpoint_url: str | None = _var(
        "MEDVEC_S3_ENDPOINT_URL", None, "S3-compatible endpoint (MinIO, moto) for boto3 and LanceDB; unset: AWS")
    home: HomePath = _var("MEDVEC_HOME", DEFAULT_HOME, "the Medvec home: a folder or an s3:// prefix")
    collection: str | None = _var("MEDVEC_COLLECTION", None, "a collection: the sub-home $MEDVEC_HOME/collections/"
                                  "NAME with its own tables, batches and evaluation (default: none, the home itself)")
    lancedb_uri: str = _var("MEDVEC_LANCEDB_URI", "", "LanceDB tables: a folder or s3:// URI "
                            "(default: $MEDVEC_HOME/lancedb)")
    source: str = _var("MEDVEC_SOURCE", "", "what `medvec ingest` and the folder sensor read "
                       "(default: $MEDVEC_HOME/incoming)")
    cache_dir: Path | None = _var("MEDVEC_CACHE_DIR", None, "local cache for model files when the home is on S3 "
                                  "(default: ~/.cache/medvec)")
    aws_region: str = Field("us-east-1", validation_alias=AliasChoices("AWS_DEFAULT_REGION", "AWS_REGION"),
                            description="AWS region for S3 clients (AWS_DEFAULT_REGION, else AWS_REGION)")
    pseudonym_key: SecretStr | None = _var(
        "MEDVEC_PSEUDONYM_KEY", None, "secret key for patient pseudonyms (required on shared data)")
    allow_dev_key: bool = _var("MEDVEC_ALLOW_DEV_KEY", False, "let ingest use the public development pseudonym "
                               "key when MEDVEC_PSEUDONYM_KEY is unset (`medvec demo` and the tests only)")
    date_policy: Literal["remove", "shift"] = _var(
        "MEDVEC_DATE_POLICY", "remove", "dates in allowed tags: remove, or shift per subject by a keyed offset")
    allow_burned_in: bool = _var("MEDVEC_ALLOW_BURNED_IN", False, "ingest images flagged BurnedInAnnotation=YES "
                                 "or of a burned-in-text modality (checked by a person first)")
    burned_in_modalities: str = _var("MEDVEC_BURNED_IN_MODALITIES", "US,SC,XA", "modalities refused unless "
                                     "BurnedInAnnotation=NO, comma-separated")
    # --- the model and where it runs ---
    model: str = _var("MEDVEC_MODEL", DEFAULT_MODEL, "registry name (`medvec models`) or a Hugging Face id")
    embedder: Literal["local", "nim"] = _var("MEDVEC_EMBEDDER", "local", "where the model runs: local or nim")
    model_source: Literal["hub", "s3", "local"] = _var(
        "MEDVEC_MODEL_SOURCE", "hub", "where local model files come from: hub, s3 or local")
    model_location: str | None = _var("MEDVEC_MODEL_LOCATION", None, "s3://bucket/prefix or a folder, for the "
                                      "s3 and local model sources")
    model_revision: str | None = _var("MEDVEC_MODEL_REVISION", None, "pinned Hugging Face revision")
    model_dim: int | None = _var("MEDVEC_MODEL_DIM", None, "embedding size of a Hugging Face id outside the "
                                 "registry", gt=0)
    model_image_size: int | None = _var("MEDVEC_MODEL_IMAGE_SIZE", None, "input size (px) of a Hugging Face id "
                                        "outside the registry", gt=0)
    hf_token: SecretStr | None = _var("HF_TOKEN", None, "Hugging Face token for gated models (MedSigLIP)")
    hf_hub_offline: bool = _var("HF_HUB_OFFLINE", False, "never ask the Hugging Face Hub (cached files only)")
    nim_url: str | None = _var("MEDVEC_NIM_URL", None, "NIM (or `medvec embed-server`) base URL")
    nim_model: str = _var("MEDVEC_NIM_MODEL", "nvidia/nvclip", "the model id the NIM serves")
    nim_concurrency: int = _var("MEDVEC_NIM_CONCURRENCY", 4, "NIM requests in flight per process", gt=0)
    nim_timeout_s: float = _var("MEDVEC_NIM_TIMEOUT_S", 60.0, "seconds one NIM request may take", gt=0)
    nvidia_api_key: SecretStr | None = _var("NVIDIA_API_KEY", None, "API key the NIM asks for")
    vocabulary: Literal["auto", "chest", "labels"] = _var(
        "MEDVEC_VOCABULARY", "auto", "the labels fallback queries and evaluation use: chest (CheXpert findings), "
        "labels (those the image table holds, e.g. SCIN's conditions) or auto (chest when every label present "
        "is a chest finding)")
    # --- servers ---
    embed_server_key: SecretStr | None = _var("MEDVEC_EMBED_SERVER_KEY", None,
                                              "bearer key `medvec embed-server` requires")
    api_token: SecretStr | None = _var("MEDVEC_API_TOKEN", None, "bearer token `medvec serve` requires")
    allowed_hosts: str = _var("MEDVEC_ALLOWED_HOSTS", "", "extra Host/Origin names `medvec serve` answers, "
                              "comma-separated (loopback names always)")
    ort_web_dist: Path | None = _var("MEDVEC_ORT_WEB_DIST", None, "onnxruntime-web's dist folder for "
                                     "`medvec bundle` (default: web/node_modules)")
    dagster_home: Path | None = _var("DAGSTER_HOME", None, "Dagster's instance folder (default: "
                                     "$MEDVEC_HOME/dagster)")
    # --- hostile inputs: what one file or one upload may cost ---
    max_file_bytes: int = _var("MEDVEC_MAX_FILE_BYTES", DEFAULT_MAX_FILE_BYTES, "largest source file read, bytes "
                               "(larger ones become an ingest error)", gt=0)
    max_pixels: int = _var("MEDVEC_MAX_PIXELS", DEFAULT_MAX_PIXELS, "largest frame decoded: rows x columns x "
                           "samples, checked in the header before any decoder runs", gt=0)
    upload_concurrency: int = _var("MEDVEC_UPLOAD_CONCURRENCY", 2, "image uploads `medvec serve` decodes at once",
                                   ge=1)
    # --- watching sources (sensors) ---
    watch_s3: str | None = _var("MEDVEC_WATCH_S3", None, "s3:// prefix the S3 sensor watches "
                                "(default: MEDVEC_SOURCE when it is s3://)")
    watch_batch_size: int = _var("MEDVEC_WATCH_BATCH_SIZE", DEFAULT_BATCH_SIZE, "files per batch at most", ge=1)
    watch_batches_per_tick: int = _var("MEDVEC_WATCH_BATCHES_PER_TICK", 4, "batches a tick always opens "
                                       "(the floor)", ge=1)
    watch_max_batches_per_tick: int = _var("MEDVEC_WATCH_MAX_BATCHES_PER_TICK", 400, "batches a tick may open "
                                           "while within its time budget (the ceiling)", ge=1)
    watch_tick_budget_s: float = _var("MEDVEC_WATCH_TICK_BUDGET_S", 20.0, "seconds a tick may spend opening "
                                      "batches beyond the floor (0: only the floor)", ge=0)
    watch_runs_per_tick: int = _var("MEDVEC_WATCH_RUNS_PER_TICK", 8, "batch runs requested per tick", ge=1)
    watch_partial_wait_s: float = _var("MEDVEC_WATCH_PARTIAL_WAIT_S", 300.0,
                                       "a partial batch opens after the source is quiet this long", ge=0)
    watch_listing_budget_s: float = _var("MEDVEC_WATCH_LISTING_BUDGET_S", 15.0,
                                         "seconds one tick may list the source", ge=0)
    watch_settle_margin_s: float = _var("MEDVEC_WATCH_SETTLE_MARGIN_S", 2.0,
                                        "clock skew allowed between the file server and here", ge=0)
    watch_interval_s: int = _var("MEDVEC_WATCH_INTERVAL_S", 30, "sensor minimum interval (s)", ge=0)
    refresh_quiet_s: float = _var("MEDVEC_REFRESH_QUIET_S", 60.0,
                                  "search refresh waits this long after the last embedding", ge=0)
    # --- a DICOMweb archive (QIDO-RS / WADO-RS), docs/pacs.md ---
    dicomweb_url: str | None = _var("MEDVEC_DICOMWEB_URL", None, "DICOMweb service root, e.g. "
                                    "http://orthanc:8042/dicom-web")
    dicomweb_token: SecretStr | None = _var("MEDVEC_DICOMWEB_TOKEN", None, "bearer token for the archive")
    dicomweb_user: str | None = _var("MEDVEC_DICOMWEB_USER", None, "basic-auth user for the archive")
    dicomweb_password: SecretStr | None = _var("MEDVEC_DICOMWEB_PASSWORD", None, "basic-auth password")
    dicomweb_modalities: str = _var("MEDVEC_DICOMWEB_MODALITIES", "", "modalities to list, comma-separated "
                                    "(e.g. CR,DX; empty: all)")
    dicomweb_query: str = _var("MEDVEC_DICOMWEB_QUERY", "", "extra QIDO filters, Key=value&Key=value")
    dicomweb_max_per_tick: int = _var("MEDVEC_DICOMWEB_MAX_PER_TICK", 2000, "instances a sensor tick opens", ge=1)
    dicomweb_concurrency: int = _var("MEDVEC_DICOMWEB_CONCURRENCY", 8, "WADO requests in flight", ge=1)
    dicomweb_lookback_days: int = _var("MEDVEC_DICOMWEB_LOOKBACK_DAYS", 1, "days before the newest study date "
                                       "seen that every tick queries again (late arrivals)", ge=0)
    dicomweb_connect_timeout_s: float = _var("MEDVEC_DICOMWEB_CONNECT_TIMEOUT_S", 5.0, "seconds to connect", gt=0)
    dicomweb_read_timeout_s: float = _var("MEDVEC_DICOMWEB_READ_TIMEOUT_S", 60.0, "seconds to read an answer",
                                          gt=0)
    dicomweb_retries: int = _var("MEDVEC_DICOMWEB_RETRIES", 2, "retries after a refused or dropped connection "
                                 "or HTTP 429/5xx (never after a read timeout)", ge=0)
    # --- public dataset downloads (`medvec fetch`), docs/datasets.md ---
    physionet_username: str | None = _var("PHYSIONET_USERNAME", None, "PhysioNet user for MIMIC-CXR downloads")
    physionet_password: SecretStr | None = _var("PHYSIONET_PASSWORD", None, "PhysioNet password")
    # --- deployment profile (checked, with their own messages, by pipelines/profiles.py) ---
    profile: str = _var("MEDVEC_PROFILE", "local", "local | gpu-box | nim | cluster")
    max_concurrent: str | None = _var("MEDVEC_MAX_CONCURRENT", None, "gpu-box: steps at a time (default 4)")
    k8s_gpus_per_step: str | None = _var("MEDVEC_K8S_GPUS_PER_STEP", None, "cluster: GPUs per embedding pod (1)")
    k8s_env_secrets: str | None = _var("MEDVEC_K8S_ENV_SECRETS", None, "cluster: Secrets given to step pods, "
                                       "comma-separated (medvec-secrets)")
    k8s_namespace: str | None = _var("MEDVEC_K8S_NAMESPACE", None, "cluster: namespace of step pods")
    k8s_image_pull_policy: str | None = _var("MEDVEC_K8S_IMAGE_PULL_POLICY", None, "cluster: step pods' pull policy")
    k8s_service_account: str | None = _var("MEDVEC_K8S_SERVICE_ACCOUNT", None, "cluster: step pods' account")
    k8s_max_concurrent: str | None = _var("MEDVEC_K8S_MAX_CONCURRENT", None, "cluster: pods per run at most")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return init_settings, _EnvSource(settings_cls)

    @field_validator("embedder", "vocabulary", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("hf_hub_offline", "allow_dev_key", "allow_burned_in", mode="before")
    @classmethod
    def _hub_flag(cls, value):
        # huggingface_hub's own reading of the variable: anything but these words is "not offline".
        return str(value).strip().upper() in {"1", "ON", "YES", "TRUE"} if isinstance(value, str) else value

    @field_validator("collection")
    @classmethod
    def _collection(cls, value):
        return check_collection_name(value) if value is not None else None

    @field_validator("home", mode="before")
    @classmethod
    def _home(cls, value, info: ValidationInfo):
        if isinstance(value, (Path, S3Path)):
            return value
        text = str(value)
        if is_remote(text):  # not as_path: its fallback endpoint is these very settings
            return S3Path(text.rstrip("/"), info.data.get("s3_endpoint_url"))
        return Path(text).expanduser().absolute()

    @property
    def burned_in_modality_list(self) -> tuple[str, ...]:
        return tuple(m.strip().upper() for m in self.burned_in_modalities.split(",") if m.strip())

    @property
    def allowed_host_list(self) -> tuple[str, ...]:
        return tuple(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())

    # The home, tables and source as given, before a collection and the defaults apply (`for_collection`).
    _given: dict = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        # Frozen model: the collection and the home-relative defaults apply once, here, while it is being built.
        self._given = {"home": self.home, "lancedb_uri": self.lancedb_uri, "source": self.source}
        if self.collection:  # the collection's sub-home stands in for the home everywhere but the model cache
            self.__dict__["home"] = collection_home(self.home, self.collection)
            if self.lancedb_uri:
                self.__dict__["lancedb_uri"] = f"{self.lancedb_uri.rstrip('/')}/collections/{self.collection}"
        if not self.lancedb_uri:
            self.__dict__["lancedb_uri"] = str(self.home / "lancedb")
        if not self.source:
            self.__dict__["source"] = str(self.home / "incoming")

    @property
    def watched_folder(self) -> str:
        """The folder the folder sensor watches and downloads land in: MEDVEC_SOURCE when it is a folder,
        else $MEDVEC_HOME/incoming (the S3 sensor watches an s3:// source)."""
        return self.source if not self.source.startswith("s3://") else str(self.home / "incoming")

    @property
    def model_cache(self) -> Path:
        """Where model snapshots, S3 mirrors and built tiny models are kept: under a local Medvec home, or in
        the local cache (MEDVEC_CACHE_DIR, else ~/.cache/medvec) when the home is on S3, since model loaders
        read local files."""
        if is_remote(self.home):
            return Path(self.cache_dir or Path.home() / ".cache" / "medvec").expanduser() / "models"
        return Path(root_home(self.home, self.collection)) / "models"

    @property
    def root_home(self) -> HomePath:
        """The home itself, whichever collection these settings are for."""
        return self._given.get("home") or root_home(self.home, self.collection)

    def for_collection(self, name: str | None) -> "Settings":
        """These settings for collection `name` of the same home (None: the home itself)."""
        return type(self).model_validate({**self.model_dump(), **self._given, "collection": name})

    def exported(self, field_name: str) -> bool:
        """Whether this secret is set and is what this process's environment holds, so that a Dagster
        `EnvVar` of its variable resolves to it in runs (Settings built from a dict may hold one that isn't)."""
        value = getattr(self, field_name)
        return value is not None and os.environ.get(env_var(field_name)) == value.get_secret_value()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Settings from `environ` (default: this process's environment); a bad value raises SettingsError."""
        token = _ENVIRON.set(environ)
        try:
            return cls()
        except ValidationError as exc:
            raise SettingsError(_one_line(exc, environ)) from None
        finally:
            _ENVIRON.reset(token)


def env_var(field_name: str) -> str:
    """The environment variable a Settings field is read from."""
    alias = Settings.model_fields[field_name].validation_alias
    return alias.choices[0] if alias is not None and alias.choices[0] else field_name.upper()


def _one_line(exc: ValidationError, environ: Mapping[str, str] | None) -> str:
    environ = os.environ if environ is None else environ
    problems = []
    for error in exc.errors():
        where = str(error["loc"][0]) if error["loc"] else ""
        variable = where if where.isupper() else env_var(where) if where in Settings.model_fields else where
        value = environ.get(variable, error.get("input"))
        problems.append(f"{variable}={value!r} is not allowed: {_allowed(error)}")
    return "; ".join(problems)


def _allowed(error: dict) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    words = {"int_parsing": "a whole number", "float_parsing": "a number", "bool_parsing": "true or false",
             "int_from_float": "a whole number"}
    if kind in words:
        return words[kind]
    if kind == "literal_error":
        return f"one of {ctx.get('expected')}"
    if kind in {"greater_than", "greater_than_equal"}:
        return f"a number {'>' if kind == 'greater_than' else '>='} {ctx.get('gt', ctx.get('ge'))}"
    return error["msg"].removeprefix("Value error, ")  # a validator's own message is already plain words


@lru_cache(maxsize=4)
def _settings_for(environment: tuple[tuple[str, str], ...]) -> Settings:
    return Settings.from_env(dict(environment))


def _known_variables() -> set[str]:
    return {env_var(name) for name in Settings.model_fields} | {"AWS_REGION"}


def get_settings() -> Settings:
    """This process's Settings, built once. Keyed by the values of Medvec's own variables, so a process
    whose environment never changes builds it exactly once, and a test that sets a variable sees it."""
    known = _KNOWN
    return _settings_for(tuple(sorted((k, v) for k, v in os.environ.items() if k in known)))


_KNOWN = frozenset(_known_variables())


def local_state_dir(settings: Settings) -> Path:
    """A local folder for what must sit on a local disk (Dagster's SQLite instance, generated sample data):
    the home itself, or the local cache when the home is on S3."""
    return settings.model_cache.parent if is_remote(settings.home) else Path(settings.home)


def model_cache(home: HomePath, settings: Settings | None = None, collection: str | None = None) -> Path:
    """`Settings.model_cache` for another home (a resource's, the sub-home of `collection` when one is
    named): the same rule, the same cache folder."""
    settings = settings or get_settings()
    return settings.model_copy(update={"home": home, "collection": collection}).model_cache
