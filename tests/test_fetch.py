"""`medvec fetch` against a real local HTTP server in PhysioNet's layout: 401 without credentials,
connections dropped mid-file, Range honoured; resumes without refetching bytes, refuses corrupt files."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

import pytest

from medvec.datasets.fetch import FetchError, fetch_dataset
from medvec.sources import LocalFolderSource
from tests.file_server import FileServer

USER, PASSWORD = "reader", "s3cret-pass"
IMAGE = bytes(range(256)) * 400  # 102,400 bytes
OTHER = b"\x89PNG" + bytes(5000)
REPORT = b"FINDINGS: no effusion.\n"


def physionet_server(files: dict[str, bytes], served: dict[str, bytes] | None = None) -> FileServer:
    """PhysioNet's layout: the project's files under /files/mimic-cxr-jpg/2.1.0/, behind HTTP basic auth."""
    return FileServer(files, prefix="/files/mimic-cxr-jpg/2.1.0/", served=served, credentials=(USER, PASSWORD))


def _layout() -> dict[str, bytes]:
    files = {"files/p10/p10000032/s50414267/a.jpg": IMAGE, "files/p10/p10000032/s50414267/b.jpg": OTHER,
             "files/p11/p11000011/s50000001.txt": REPORT}
    sums = "".join(f"{hashlib.sha256(v).hexdigest()}  {k}\n" for k, v in sorted(files.items()))
    return {**files, "SHA256SUMS.txt": sums.encode()}


def test_credentials_are_required_and_never_echoed(tmp_path):
    with physionet_server(_layout()) as server:
        with pytest.raises(FetchError, match="set PHYSIONET_USERNAME"):
            fetch_dataset("mimic-cxr-jpg", tmp_path, base_url=server.base_url)
        with pytest.raises(FetchError, match="refused access \\(401\\)") as caught:
            fetch_dataset("mimic-cxr-jpg", tmp_path, base_url=server.base_url, username=USER, password="wrong")
        assert "wrong" not in str(caught.value) and USER not in str(caught.value)


def test_a_file_cut_at_half_resumes_without_fetching_the_first_half_again(tmp_path):
    image = "files/p10/p10000032/s50414267/a.jpg"
    with physionet_server(_layout()) as server:
        server.cut_once[image] = len(IMAGE) // 2
        summary = fetch_dataset("mimic-cxr-jpg", tmp_path, base_url=server.base_url, username=USER, password=PASSWORD)
        assert server.bytes_served[image] == len(IMAGE)  # half, then the other half: nothing twice
    assert (tmp_path / image).read_bytes() == IMAGE and not (tmp_path / (image + ".part")).exists()
    assert sorted(summary.fetched) == sorted(_layout()) and not summary.refused
    for folder in ("files/p10/p10000032/s50414267", "files/p10", "files/p11/p11000011", "files", ""):
        assert (tmp_path / folder / ".done").exists()
    with physionet_server(_layout()) as server:  # a second run checks what is there and fetches nothing
        again = fetch_dataset("mimic-cxr-jpg", tmp_path, base_url=server.base_url, username=USER, password=PASSWORD)
        assert again.fetched == [] and server.bytes_served.get(image, 0) == 0


def test_a_partial_file_left_by_an_earlier_run_is_resumed(tmp_path):
    image = "files/p10/p10000032/s50414267/a.jpg"
    (tmp_path / image).parent.mkdir(parents=True)
    (tmp_path / (image + ".part")).write_bytes(IMAGE[:30000])
    with physionet_server(_layout()) as server:
        fetch_dataset("mimic-cxr-jpg", tmp_path, base_url=server.base_url, username=USER, password=PASSWORD)
        assert server.bytes_served[image] == len(IMAGE) - 30000
    assert (tmp_path / image).read_bytes() == IMAGE


def test_a_corrupted_file_is_refused_deleted_and_its_folder_not_marked_done(tmp_path, caplog):
    bad = "files/p10/p10000032/s50414267/b.jpg"
    with physionet_server(_layout(), served={bad: b"\x89PNG" + bytes(4999) + b"X"}) as server:
        summary = fetch_dataset("mimic-cxr-jpg", tmp_path, base_url=server.base_url, username=USER, password=PASSWORD)
    assert summary.refused == [bad]
    assert not (tmp_path / bad).exists() and not (tmp_path / (bad + ".part")).exists()
    assert "does not match SHA256SUMS.txt" in caplog.text
    assert (tmp_path / "files/p10/p10000032/s50414267/a.jpg").exists()
    assert not (tmp_path / "files/p10/p10000032/s50414267/.done").exists() and not (tmp_path / ".done").exists()
    assert (tmp_path / "files/p11/p11000011/.done").exists()  # the complete folder is marked


# --- SCIN: a public Google Cloud Storage bucket, listed page by page with size and MD5 per object ------

SCIN_BASE = "/dx-scin-public-data/"
PHOTO = bytes(range(251)) * 300  # 75,300 bytes


def _scin() -> dict[str, bytes]:
    return {"dataset/scin_cases.csv": b"case_id,image_1_path\n1,dataset/images/1.png\n",
            "dataset/scin_labels.csv": b"case_id,weighted_skin_condition_label\n1,\"{'Eczema': 1.0}\"\n",
            "dataset/images/1.png": PHOTO, "dataset/images/2.png": OTHER, "dataset/images/3.png": b"\x89PNG 3",
            "other/unrelated.txt": b"not part of the dataset"}


def scin_server(served: dict[str, bytes] | None = None) -> FileServer:
    return FileServer(_scin(), prefix=SCIN_BASE, served=served, bucket="dx-scin-public-data", page_size=2)


def test_scin_lists_its_bucket_page_by_page_and_fetches_each_object_whole(tmp_path):
    with scin_server() as server:
        server.cut_once["dataset/images/1.png"] = len(PHOTO) // 3
        summary = fetch_dataset("scin", tmp_path, base_url=server.base_url)
        assert server.listing_pages == 3  # five objects under dataset/, two a page
        assert server.bytes_served["dataset/images/1.png"] == len(PHOTO)  # resumed with Range, nothing twice
    wanted = {k: v for k, v in _scin().items() if k.startswith("dataset/")}
    assert sorted(summary.fetched) == sorted(wanted) and not summary.refused
    assert all((tmp_path / k).read_bytes() == v for k, v in wanted.items())
    assert not (tmp_path / "other").exists() and not list(tmp_path.rglob("*.part"))
    assert all((tmp_path / folder / ".done").exists() for folder in ("dataset/images", "dataset", ""))
    with scin_server() as server:  # complete files are checked against the listing, not fetched again
        again = fetch_dataset("scin", tmp_path, base_url=server.base_url, only=("dataset/images/",))
        assert again.fetched == [] and len(again.already_complete) == 3 and server.bytes_served == {}


def test_a_scin_object_that_does_not_match_its_listing_is_refused_and_deleted(tmp_path, caplog):
    same_size = b"\x89PNG" + bytes(4999) + b"X"  # OTHER's size, other bytes: only the MD5 tells
    with scin_server(served={"dataset/images/2.png": same_size, "dataset/images/3.png": b"\x89PN"}) as server:
        summary = fetch_dataset("scin", tmp_path, base_url=server.base_url)
    assert sorted(summary.refused) == ["dataset/images/2.png", "dataset/images/3.png"]
    assert "MD5" in caplog.text and "does not match the bucket's listing" in caplog.text
    assert "3 bytes where the bucket's listing lists 6" in caplog.text
    assert not list((tmp_path / "dataset/images").glob("[23].png*"))  # neither the file nor its part stays
    assert (tmp_path / "dataset/images/1.png").read_bytes() == PHOTO
    assert not (tmp_path / "dataset/images/.done").exists() and not (tmp_path / "dataset/.done").exists()


# --- Open-I: NLM's two tarballs, checked by the size the server announces, unpacked safely ------------

OPEN_I_BASE = "/imgs/collections/"
REPORT_XML = b'<eCitation><AbstractText Label="FINDINGS">Clear lungs.</AbstractText></eCitation>'


def _tarball(members: list[tuple[str, bytes | None, bytes]]) -> bytes:
    """A .tgz of (name, body, tar type): a body for a file, None for any other member type."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, body, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE or kind == tarfile.LNKTYPE:
                info.linkname = "/etc/passwd"
            info.size = len(body or b"")
            archive.addfile(info, io.BytesIO(body) if body else None)
    return out.getvalue()


def _open_i(png: bytes | None = None) -> dict[str, bytes]:
    images = [(f"CXR{n}_1_IM-000{n}-1001.png", bytes([n]) * 40000 + os.urandom(20000), tarfile.REGTYPE)
              for n in (1, 2, 3)]
    return {"NLMCXR_png.tgz": png or _tarball(images),
            "NLMCXR_reports.tgz": _tarball([("ecgen-radiology", None, tarfile.DIRTYPE),
                                            ("ecgen-radiology/1.xml", REPORT_XML, tarfile.REGTYPE)])}


def test_open_i_tarballs_resume_and_unpack_into_folders_the_sensor_sees_only_whole(tmp_path):
    files = _open_i()
    seen_mid_unpack = []

    def look(name, done, total):  # the folder sensor's own listing, taken while the images unpack
        if name == "unpack NLMCXR_png":
            seen_mid_unpack.append([f.uri for f in LocalFolderSource(tmp_path).scan().files])

    with FileServer(files, prefix=OPEN_I_BASE) as server:
        server.cut_once["NLMCXR_png.tgz"] = len(files["NLMCXR_png.tgz"]) // 2
        summary = fetch_dataset("open-i", tmp_path, base_url=server.base_url, progress=look)
        assert server.bytes_served["NLMCXR_png.tgz"] == len(files["NLMCXR_png.tgz"])
    assert summary.unpacked == ["NLMCXR_png", "NLMCXR_reports"] and not summary.refused
    assert sorted(p.name for p in (tmp_path / "NLMCXR_png").iterdir()) == [
        ".done", "CXR1_1_IM-0001-1001.png", "CXR2_1_IM-0002-1001.png", "CXR3_1_IM-0003-1001.png"]
    assert (tmp_path / "NLMCXR_reports/ecgen-radiology/1.xml").read_bytes() == REPORT_XML
    assert (tmp_path / "NLMCXR_reports/.done").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".downloads", "NLMCXR_png", "NLMCXR_reports"]
    assert not list((tmp_path / ".downloads").iterdir())  # each tarball deleted once unpacked
    # Looked at after each of the three images: the images folder appeared in one step, with its marker.
    assert len(seen_mid_unpack) == 3 and not any("NLMCXR_png/" in u for look in seen_mid_unpack for u in look)
    with FileServer(files, prefix=OPEN_I_BASE) as server:
        again = fetch_dataset("open-i", tmp_path, base_url=server.base_url)
        assert again.already_complete == sorted(files) and server.bytes_served == {}


@pytest.mark.parametrize("member", [
    ("/etc/cron.d/evil", b"x", tarfile.REGTYPE), ("../escape.png", b"x", tarfile.REGTYPE),
    ("images/../../escape.png", b"x", tarfile.REGTYPE), ("link.png", None, tarfile.SYMTYPE),
    ("hard.png", None, tarfile.LNKTYPE), ("tty", None, tarfile.CHRTYPE), ("pipe", None, tarfile.FIFOTYPE),
], ids=["absolute", "dotdot", "nested-dotdot", "symlink", "hardlink", "device", "fifo"])
def test_a_tarball_with_an_unsafe_member_is_refused_and_nothing_is_unpacked(tmp_path, member, caplog):
    png = _tarball([("CXR1_1_IM-0001-1001.png", b"\x89PNG fine", tarfile.REGTYPE), member])
    target = tmp_path / "target"
    with FileServer(_open_i(png), prefix=OPEN_I_BASE) as server:
        summary = fetch_dataset("open-i", target, base_url=server.base_url)
    assert summary.refused == ["NLMCXR_png.tgz"] and summary.unpacked == ["NLMCXR_reports"]
    assert "nothing was unpacked" in caplog.text
    assert sorted(p.name for p in target.iterdir()) == [".downloads", "NLMCXR_reports"]  # no half folder
    assert not list((target / ".downloads").iterdir()) and not (tmp_path / "escape.png").exists()


def test_a_tarball_shorter_than_the_server_announces_is_refused(tmp_path, caplog):
    files = _open_i()
    cut = files["NLMCXR_reports.tgz"][:-10]
    with FileServer(files, prefix=OPEN_I_BASE, served={"NLMCXR_reports.tgz": cut}) as server:
        summary = fetch_dataset("open-i", tmp_path, base_url=server.base_url)
    assert summary.refused == ["NLMCXR_reports.tgz"]
    assert f"{len(cut)} bytes where the server's Content-Length lists {len(cut) + 10}" in caplog.text
    assert not (tmp_path / "NLMCXR_reports").exists() and not list((tmp_path / ".downloads").iterdir())


def test_medvec_fetch_open_i_reports_the_unpacked_folders_and_a_rerun_fetches_nothing(tmp_path, capsys):
    from medvec.cli import main

    with FileServer(_open_i(), prefix=OPEN_I_BASE) as server:
        assert main(["fetch", "open-i", str(tmp_path), "--base-url", server.base_url]) == 0
        assert "open-i: 2 fetched, 2 unpacked, 0 already complete, 0 refused" in capsys.readouterr().out
        served = dict(server.bytes_served)
        assert main(["fetch", "open-i", str(tmp_path), "--base-url", server.base_url]) == 0
        assert "0 fetched, 2 already complete" in capsys.readouterr().out and server.bytes_served == served
