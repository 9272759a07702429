"""Settings: every variable Medvec reads is declared once with its default and meaning; a bad value is
one line naming it (from Python, the `medvec` command and the Dagster code location); secrets never show."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medvec.settings import DEFAULT_BATCH_SIZE, Settings, SettingsError, env_var, get_settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

#: Every default, by variable (MEDVEC_HOME is relative to the working directory).
DEFAULTS = {
    "MEDVEC_S3_ENDPOINT_URL": None, "MEDVEC_CACHE_DIR": None, "AWS_DEFAULT_REGION": "us-east-1",
    "MEDVEC_PSEUDONYM_KEY": None, "MEDVEC_MODEL": "tiny-siglip", "MEDVEC_EMBEDDER": "local",
    "MEDVEC_MODEL_SOURCE": "hub", "MEDVEC_MODEL_LOCATION": None, "MEDVEC_MODEL_REVISION": None,
    "MEDVEC_MODEL_DIM": None, "MEDVEC_MODEL_IMAGE_SIZE": None, "HF_TOKEN": None, "HF_HUB_OFFLINE": False,
    "MEDVEC_VOCABULARY": "auto", "MEDVEC_NIM_URL": None, "MEDVEC_NIM_MODEL": "nvidia/nvclip", "MEDVEC_NIM_CONCURRENCY": 4,
    "MEDVEC_NIM_TIMEOUT_S": 60.0, "NVIDIA_API_KEY": None, "MEDVEC_EMBED_SERVER_KEY": None,
    "MEDVEC_API_TOKEN": None, "MEDVEC_ORT_WEB_DIST": None, "DAGSTER_HOME": None, "MEDVEC_WATCH_S3": None,
    "MEDVEC_WATCH_BATCH_SIZE": DEFAULT_BATCH_SIZE, "MEDVEC_WATCH_BATCHES_PER_TICK": 4,
    "MEDVEC_WATCH_RUNS_PER_TICK": 8, "MEDVEC_WATCH_PARTIAL_WAIT_S": 300.0, "MEDVEC_WATCH_LISTING_BUDGET_S": 15.0,
    "MEDVEC_WATCH_SETTLE_MARGIN_S": 2.0, "MEDVEC_WATCH_INTERVAL_S": 30, "MEDVEC_REFRESH_QUIET_S": 60.0,
    "MEDVEC_PROFILE": "local", "MEDVEC_MAX_CONCURRENT": None, "MEDVEC_K8S_GPUS_PER_STEP": None,
    "MEDVEC_K8S_ENV_SECRETS": None, "MEDVEC_K8S_NAMESPACE": None, "MEDVEC_K8S_IMAGE_PULL_POLICY": None,
    "MEDVEC_K8S_SERVICE_ACCOUNT": None, "MEDVEC_K8S_MAX_CONCURRENT": None,
    "MEDVEC_WATCH_MAX_BATCHES_PER_TICK": 400, "MEDVEC_WATCH_TICK_BUDGET_S": 20.0,
    "MEDVEC_DICOMWEB_URL": None, "MEDVEC_DICOMWEB_TOKEN": None, "MEDVEC_DICOMWEB_USER": None,
    "MEDVEC_DICOMWEB_PASSWORD": None, "MEDVEC_DICOMWEB_MODALITIES": "", "MEDVEC_DICOMWEB_QUERY": "",
    "MEDVEC_DICOMWEB_MAX_PER_TICK": 2000, "MEDVEC_DICOMWEB_CONCURRENCY": 8, "MEDVEC_DICOMWEB_LOOKBACK_DAYS": 1,
    "MEDVEC_DICOMWEB_CONNECT_TIMEOUT_S": 5.0, "MEDVEC_DICOMWEB_READ_TIMEOUT_S": 60.0, "MEDVEC_DICOMWEB_RETRIES": 2,
    "PHYSIONET_USERNAME": None, "PHYSIONET_PASSWORD": None,
    "MEDVEC_MAX_FILE_BYTES": 2 * 2**30, "MEDVEC_MAX_PIXELS": 50_000_000, "MEDVEC_UPLOAD_CONCURRENCY": 2,
    "MEDVEC_ALLOW_DEV_KEY": False, "MEDVEC_DATE_POLICY": "remove", "MEDVEC_ALLOW_BURNED_IN": False,
    "MEDVEC_BURNED_IN_MODALITIES": "US,SC,XA", "MEDVEC_ALLOWED_HOSTS": "", "MEDVEC_COLLECTION": None,
}
SECRETS = {"MEDVEC_PSEUDONYM_KEY": "pseudo-secret-1", "NVIDIA_API_KEY": "nvapi-secret-2",
           "HF_TOKEN": "hf_secret_3", "MEDVEC_EMBED_SERVER_KEY": "embed-secret-4", "MEDVEC_API_TOKEN": "api-secret-5",
           "MEDVEC_DICOMWEB_TOKEN": "dicomweb-secret-6", "MEDVEC_DICOMWEB_PASSWORD": "dicomweb-secret-7",
           "PHYSIONET_PASSWORD": "physionet-secret-8"}


def _values(settings: Settings) -> dict:
    return {env_var(name): getattr(settings, name) for name in Settings.model_fields}


def test_every_variable_has_its_default_when_the_environment_is_empty(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    values = _values(settings)
    home = values.pop("MEDVEC_HOME")
    assert home == tmp_path / "medvec_home"
    assert values.pop("MEDVEC_LANCEDB_URI") == str(home / "lancedb")
    assert values.pop("MEDVEC_SOURCE") == str(home / "incoming")
    assert values == DEFAULTS
    assert settings.model_cache == home / "models"


def test_every_variable_says_what_it_is_for():
    missing = [env_var(name) for name, field in Settings.model_fields.items() if not field.description]
    assert missing == []


def test_every_variable_the_code_names_is_declared():
    declared = {env_var(name) for name in Settings.model_fields}
    named = set()
    for folder in ("medvec", "pipelines", "assets", "resources"):
        for path in (ROOT / folder).rglob("*.py"):
            named |= set(re.findall(r"\bMEDVEC_[A-Z0-9_]*[A-Z0-9]\b(?!\.txt)", path.read_text(encoding="utf-8")))
    assert named - declared == set()


def test_a_value_is_read_typed():
    settings = Settings.from_env({"MEDVEC_HOME": "s3://bucket/home", "MEDVEC_S3_ENDPOINT_URL": "http://127.0.0.1:9",
                                  "MEDVEC_EMBEDDER": " NIM ", "MEDVEC_MODEL_DIM": "768", "AWS_REGION": "eu-west-1",
                                  "MEDVEC_CACHE_DIR": "/tmp/medvec-cache", "MEDVEC_WATCH_PARTIAL_WAIT_S": "0",
                                  "HF_HUB_OFFLINE": "1", "MEDVEC_MODEL_SOURCE": ""})
    assert str(settings.home) == "s3://bucket/home" and settings.home.endpoint_url == "http://127.0.0.1:9"
    assert settings.lancedb_uri == "s3://bucket/home/lancedb"
    assert settings.model_cache == Path("/tmp/medvec-cache/models")
    assert (settings.embedder, settings.model_dim, settings.aws_region) == ("nim", 768, "eu-west-1")
    assert settings.watch_partial_wait_s == 0.0 and settings.hf_hub_offline is True
    assert settings.model_source == "hub"  # an empty value counts as unset


@pytest.mark.parametrize(("env", "line"), [
    ({"MEDVEC_MODEL_DIM": "abc"}, "MEDVEC_MODEL_DIM='abc' is not allowed: a whole number"),
    ({"MEDVEC_MODEL_DIM": "-3"}, "MEDVEC_MODEL_DIM='-3' is not allowed: a number > 0"),
    ({"MEDVEC_EMBEDDER": "foo"}, "MEDVEC_EMBEDDER='foo' is not allowed: one of 'local' or 'nim'"),
    ({"MEDVEC_MODEL_SOURCE": "ftp"}, "MEDVEC_MODEL_SOURCE='ftp' is not allowed: one of 'hub', 's3' or 'local'"),
    ({"MEDVEC_VOCABULARY": "derm"}, "MEDVEC_VOCABULARY='derm' is not allowed: one of 'auto', 'chest' or 'labels'"),
    ({"MEDVEC_REFRESH_QUIET_S": "soon"}, "MEDVEC_REFRESH_QUIET_S='soon' is not allowed: a number"),
    ({"MEDVEC_WATCH_BATCH_SIZE": "0"}, "MEDVEC_WATCH_BATCH_SIZE='0' is not allowed: a number >= 1"),
    ({"MEDVEC_COLLECTION": "../x"}, "MEDVEC_COLLECTION='../x' is not allowed: '../x' is not a collection name: use "
                                    "1-64 lower-case letters, digits, '_' or '-', starting with a letter or digit "
                                    "(e.g. chest, derm_2024)"),
])
def test_a_bad_value_is_one_line_naming_the_variable_the_value_and_what_is_allowed(env, line):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == line
    assert isinstance(caught.value, ValueError) and caught.value.__cause__ is None


def _clean_env(tmp_path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDVEC_")}
    return {**env, "MEDVEC_HOME": str(tmp_path / "home"), **extra}


def test_the_medvec_command_answers_a_bad_value_with_its_line(tmp_path):
    proc = subprocess.run([str(BIN / "medvec"), "models", "--json"], env=_clean_env(tmp_path, MEDVEC_MODEL_DIM="abc"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "medvec: MEDVEC_MODEL_DIM='abc' is not allowed: a whole number"
    assert proc.stdout == ""


@pytest.mark.slow
def test_the_dagster_code_location_answers_a_bad_value_with_its_line(tmp_path):
    env = _clean_env(tmp_path, MEDVEC_EMBEDDER="foo", DAGSTER_HOME=str(tmp_path))
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = subprocess.run([str(BIN / "dagster"), "definitions", "validate", "-m", "pipelines.definitions"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "SettingsError: MEDVEC_EMBEDDER='foo' is not allowed: one of 'local' or 'nim'" in output
    assert "pydantic" not in output.lower().replace("pydantic_settings", "")  # no pydantic error dump


def test_secrets_never_show_in_a_repr_or_a_dump():
    settings = Settings.from_env(SECRETS)
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert [value for value in SECRETS.values() if value in shown] == []
    assert settings.pseudonym_key.get_secret_value() == "pseudo-secret-1"  # still there for who needs it


def test_settings_are_built_once_per_process(monkeypatch):
    monkeypatch.setenv("MEDVEC_MODEL", "siglip-base")
    first = get_settings()
    assert get_settings() is first and first.model == "siglip-base"
    monkeypatch.setenv("MEDVEC_MODEL", "tiny-siglip")  # a test (or a changed deployment) sees the new value
    assert get_settings().model == "tiny-siglip"


def test_settings_are_immutable_and_changed_by_copy():
    settings = Settings.from_env({})
    with pytest.raises(Exception):
        settings.model = "siglip-base"
    assert settings.model_copy(update={"model": "siglip-base"}).model == "siglip-base"
    assert settings.model == "tiny-siglip"


def test_definitions_are_built_from_given_settings(tmp_path):
    from pipelines.definitions import build_definitions

    settings = Settings.from_env({"MEDVEC_HOME": str(tmp_path / "home"), "MEDVEC_MODEL": "siglip-base"})
    defs = build_definitions(settings)
    assert defs.resources["embedder"].model == "siglip-base"
    assert defs.resources["medvec"].home == str(tmp_path / "home")


def test_a_collection_is_a_sub_home_with_its_own_tables_and_source_and_the_shared_model_cache(tmp_path):
    root = tmp_path / "home"
    settings = Settings.from_env({"MEDVEC_HOME": str(root), "MEDVEC_COLLECTION": "derm"})
    assert settings.home == root / "collections" / "derm" and settings.root_home == root
    assert settings.lancedb_uri == str(root / "collections" / "derm" / "lancedb")
    assert settings.source == str(root / "collections" / "derm" / "incoming")
    assert settings.model_cache == root / "models"
    chest = settings.for_collection("chest")
    assert (chest.home, chest.model_cache) == (root / "collections" / "chest", root / "models")
    assert settings.for_collection(None).lancedb_uri == Settings.from_env({"MEDVEC_HOME": str(root)}).lancedb_uri


def test_a_collection_of_a_set_table_database_is_a_database_beneath_it(tmp_path):
    settings = Settings.from_env({"MEDVEC_HOME": str(tmp_path), "MEDVEC_LANCEDB_URI": "s3://bucket/tables",
                                  "MEDVEC_COLLECTION": "chest"})
    assert settings.lancedb_uri == "s3://bucket/tables/collections/chest"
    assert settings.for_collection(None).lancedb_uri == "s3://bucket/tables"


def test_the_code_location_of_a_collection_keeps_its_state_in_the_sub_home(tmp_path):
    from pipelines.definitions import build_definitions

    settings = Settings.from_env({"MEDVEC_HOME": str(tmp_path / "home"), "MEDVEC_COLLECTION": "derm"})
    medvec = build_definitions(settings).resources["medvec"]
    assert medvec.home == str(tmp_path / "home" / "collections" / "derm")
    assert medvec.model_cache == tmp_path / "home" / "models"
