"""The download assets in a real Dagster instance against a local server: they write into the folder the
folder sensor watches, and the PhysioNet password reaches the server but no output, event or stored run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg

from assets.downloads import DOWNLOAD_ASSETS
from medvec.settings import Settings, get_settings
from medvec.sources import LocalFolderSource
from pipelines.definitions import build_definitions
from pipelines.sensors import folder_root
from resources.physionet import PhysioNetResource
from tests.file_server import FileServer

PASSWORD = "correct-horse-battery-staple-7f3a"
DOWNLOADS = {a.key.to_user_string(): a for a in DOWNLOAD_ASSETS}
SCIN = {"dataset/scin_cases.csv": b"case_id,image_1_path\n1,dataset/images/1.png\n",
        "dataset/scin_labels.csv": b"case_id\n1\n", "dataset/images/1.png": b"\x89PNG" + bytes(3000),
        "dataset/images/2.png": b"\x89PNG" + bytes(range(200)) * 10}


def _materialize(name: str, instance, resources: dict, **config) -> dg.ExecuteInProcessResult:
    return dg.materialize([DOWNLOADS[name]], instance=instance, resources=resources, raise_on_error=False,
                          run_config={"ops": {name: {"config": config}}})


def test_every_dataset_has_a_download_asset_in_the_code_location(settings):
    defs = build_definitions(settings)
    assert set(DOWNLOADS) == {"mimic_cxr_download", "mimic_cxr_jpg_download", "vindr_cxr_download",
                              "scin_download", "open_i_download"}
    assert all(defs.get_assets_def(name) for name in DOWNLOADS)


def test_the_scin_download_lands_in_the_watched_folder_for_the_folder_sensor(settings, dagster_instance, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("MEDVEC_SOURCE", str(tmp_path / "watched"))
    with FileServer(SCIN, prefix="/dx-scin-public-data/", bucket="dx-scin-public-data") as server:
        result = _materialize("scin_download", dagster_instance, {"physionet": PhysioNetResource()},
                              base_url=server.base_url)
    assert result.success
    [materialization] = result.asset_materializations_for_node("scin_download")
    assert materialization.metadata["fetched"].value == 4 and materialization.metadata["refused"].value == 0
    landed = Path(folder_root(get_settings())) / "scin"
    assert all((landed / key).read_bytes() == body for key, body in SCIN.items())
    scan = LocalFolderSource(str(landed)).scan()  # what the folder sensor's look finds there
    assert sorted(Path(f.uri).name for f in scan.files) == ["1.png", "2.png"]
    assert f"{landed / 'dataset/images'}/.done" in scan.markers


def test_a_refused_file_fails_the_materialisation_and_a_rerun_completes_it(dagster_instance, tmp_path):
    served = {"dataset/images/2.png": b"\x89PNG" + bytes(2000)}
    with FileServer(SCIN, prefix="/dx-scin-public-data/", bucket="dx-scin-public-data", served=served) as server:
        failed = _materialize("scin_download", dagster_instance, {"physionet": PhysioNetResource()},
                              base_url=server.base_url, target=str(tmp_path / "scin"))
    assert not failed.success and not (tmp_path / "scin/dataset/images/2.png").exists()
    with FileServer(SCIN, prefix="/dx-scin-public-data/", bucket="dx-scin-public-data") as server:
        again = _materialize("scin_download", dagster_instance, {"physionet": PhysioNetResource()},
                             base_url=server.base_url, target=str(tmp_path / "scin"))
        assert again.success and set(server.bytes_served) == {"dataset/images/2.png"}


def _stored_text(instance, run_id: str) -> str:
    """Everything the instance keeps about a run (its events, record and snapshots: the job snapshot holds
    resource values) and every file under its directory, as text."""
    run = instance.get_run_by_id(run_id)
    parts = [dg.serialize_value(event) for event in instance.all_logs(run_id)]
    parts += [dg.serialize_value(run), dg.serialize_value(instance.get_job_snapshot(run.job_snapshot_id)),
              dg.serialize_value(instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id))]
    for path in Path(instance.root_directory).rglob("*"):
        if path.is_file():
            parts.append(path.read_bytes().decode("latin-1"))
    return "\n".join(parts)


def test_the_physionet_password_reaches_the_server_and_nothing_else(dagster_instance, tmp_path, monkeypatch,
                                                                     capfd, caplog):
    files = {"files/p10/p10000032/s50414267/a.jpg": b"\xff\xd8" + bytes(4000)}
    sums = "".join(f"{hashlib.sha256(v).hexdigest()}  {k}\n" for k, v in files.items()).encode()
    layout = {**files, "SHA256SUMS.txt": sums}
    monkeypatch.delenv("PHYSIONET_USERNAME", raising=False)
    monkeypatch.delenv("PHYSIONET_PASSWORD", raising=False)
    with FileServer(layout, prefix="/files/mimic-cxr-jpg/2.1.0/", credentials=("reader", PASSWORD)) as server:
        unset = PhysioNetResource.from_settings(Settings.from_env())
        refused = _materialize("mimic_cxr_jpg_download", dagster_instance, {"physionet": unset},
                               base_url=server.base_url, target=str(tmp_path / "unset"))
        assert not refused.success and "set PHYSIONET_USERNAME and PHYSIONET_PASSWORD" in str(
            refused.get_step_failure_events()[0].step_failure_data.error)
        monkeypatch.setenv("PHYSIONET_USERNAME", "reader")
        monkeypatch.setenv("PHYSIONET_PASSWORD", PASSWORD)
        physionet = PhysioNetResource.from_settings(Settings.from_env())
        result = _materialize("mimic_cxr_jpg_download", dagster_instance, {"physionet": physionet},
                              base_url=server.base_url, target=str(tmp_path / "mimic"))
    assert result.success  # the server accepted the password: it was sent
    assert (tmp_path / "mimic/files/p10/p10000032/s50414267/a.jpg").read_bytes() == files[
        "files/p10/p10000032/s50414267/a.jpg"]
    captured, stored = capfd.readouterr(), _stored_text(dagster_instance, result.run_id)
    assert "mimic_cxr_jpg_download" in stored and '"bytes_downloaded"' in stored  # the run's record was read
    for text in (captured.out, captured.err, caplog.text, stored):
        assert PASSWORD not in text

