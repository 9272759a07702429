"""Each public dataset, as its owners publish it, goes in through the real ingest path with no
hand-made mapping: labels, splits, views and kept demographics match the source rows."""

from __future__ import annotations

import csv
import gzip
import io
import json

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medvec.datasets.adapters import detect_dataset, get_adapter
from medvec.datasets.splits import normalize_split
from medvec.ingest.batches import list_batches, load_batch_records
from medvec.phi import Pseudonymizer

CHEXPERT_14 = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
               "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
               "Fracture", "Support Devices"]
#: MIMIC-CXR-JPG's label files list the findings alphabetically.
MIMIC_14 = sorted(CHEXPERT_14)
VINDR_28 = ["Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture",
            "Consolidation", "Edema", "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity",
            "Lung cavity", "Lung cyst", "Mediastinal shift", "Nodule/Mass", "Pleural effusion",
            "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Rib fracture", "Other lesion", "COPD",
            "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"]
KEY = Pseudonymizer("test-key", warn=False)


def _pixels(seed: int, colour: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)  # distinct bytes per image: identical images would be kept once
    return rng.integers(0, 255, (40, 48, 3) if colour else (40, 48), dtype=np.uint8)


def write_image(path, seed: int, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(seed, fmt == "PNG-RGB")).save(path, format="PNG" if fmt.startswith("PNG") else fmt)


def write_dicom(path, seed: int, patient_id: str = "", view: str = "") -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.ViewPosition, ds.Modality = patient_id, view, "DX"
    ds.Rows, ds.Columns = 40, 48
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (_pixels(seed).astype(np.uint16) * 16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_csv(path, header: list[str], rows: list[list], gz: bool = False) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(buffer.getvalue().encode()) if gz else buffer.getvalue().encode())


def ingest_folder(root, settings, instance) -> dict[str, object]:
    """The real ingest (manifests, Dagster normalisation run), no --metadata, no --dataset."""
    from pipelines.ingest import ingest

    summary = ingest(str(root), settings, embed=False, instance=instance, workers=1, batch_size=50)
    assert not summary.failed_runs and not summary.errors, [e.message for e in summary.errors]
    records = [r for b in summary.batches for r in load_batch_records(settings.home, b)]
    return {r.source_uri.rsplit("/", 1)[-1]: r for r in records}


def _row(findings: list[str], values: dict[str, str]) -> list[str]:
    return [values.get(f, "") for f in findings]


def test_mimic_cxr_jpg_official_csvs(tmp_path, settings, dagster_instance):
    root = tmp_path / "mimic-cxr-jpg" / "2.0.0"
    images = [("10000032", "50414267", "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "PA", "train"),
              ("10000032", "50414267", "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", "LATERAL", "train"),
              ("10000764", "57375967", "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4", "AP", "validate"),
              ("10000898", "50771383", "2a280266-c8bae121-54d75383-cac046f4-ca37aa16", "", "test")]
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz",
              ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
               "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
               "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"],
              [[d, s, st, "CHEST (PA AND LAT)", v, 3056, 2544, 21800506, 213014.531, "CHEST (PA AND LAT)",
                "postero-anterior", "Erect"] for s, st, d, v, _ in images], gz=True)
    write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
              [[d, st, s, sp] for s, st, d, _, sp in images], gz=True)
    write_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", ["subject_id", "study_id", *MIMIC_14], [
        ["10000032", "50414267", *_row(MIMIC_14, {"No Finding": "1.0"})],
        ["10000764", "57375967", *_row(MIMIC_14, {"Cardiomegaly": "1.0", "Edema": "-1.0", "Pleural Effusion": "0.0"})],
        ["10000898", "50771383", *_row(MIMIC_14, {"Pneumothorax": "1.0", "Support Devices": "1.0"})]], gz=True)
    for i, (s, st, d, _, _) in enumerate(images):
        write_image(root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{st}" / f"{d}.jpg", i, "JPEG")
    (root / "SHA256SUMS.txt").write_text("0" * 64 + "  mimic-cxr-2.0.0-split.csv.gz\n")

    assert detect_dataset(str(root)).name == "mimic-cxr"
    got = ingest_folder(root, settings, dagster_instance)
    assert len(got) == 4  # the CSVs and SHA256SUMS.txt were not taken for images
    first, lateral, ap, last = (got[f"{d}.jpg"] for _, _, d, _, _ in images)
    assert first.labels == lateral.labels == ["No Finding"] and first.split == "train"
    assert (first.view_position, lateral.view_position, ap.view_position, last.view_position) == ("PA", "LATERAL", "AP", None)
    assert ap.labels == ["Cardiomegaly"] and ap.extra["uncertain_labels"] == "Edema" and ap.split == "validate"
    assert last.labels == ["Pneumothorax", "Support Devices"] and last.split == "test"
    assert first.subject_key == lateral.subject_key == KEY.subject_key("10000032")
    assert first.study_id == lateral.study_id != ap.study_id and "50414267" not in first.study_id


def test_mimic_cxr_dicom_with_record_list(tmp_path, settings, dagster_instance):
    root = tmp_path / "mimic-cxr" / "2.0.0"
    dicom_id = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
    path = f"files/p10/p10000032/s50414267/{dicom_id}.dcm"
    write_csv(root / "cxr-record-list.csv.gz", ["subject_id", "study_id", "dicom_id", "path"],
              [["10000032", "50414267", dicom_id, path]], gz=True)
    write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"],
              [[dicom_id, "50414267", "10000032", "validate"]], gz=True)
    write_dicom(root / path, 1, patient_id="10000032", view="PA")
    [record] = ingest_folder(root, settings, dagster_instance).values()
    assert record.split == "validate" and record.view_position == "PA" and record.source_format == "dicom"
    assert record.subject_key == KEY.subject_key("10000032")


def test_chexpert_train_and_valid(tmp_path, settings, dagster_instance):
    root = tmp_path / "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_14]
    train = [["CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "Female", "68", "Frontal", "AP",
              *_row(CHEXPERT_14, {"No Finding": "1.0", "Support Devices": "1.0"})],
             ["CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg", "Female", "87", "Frontal", "AP",
              *_row(CHEXPERT_14, {"Cardiomegaly": "-1.0", "Lung Opacity": "1.0", "Fracture": "1.0", "Edema": "0.0"})],
             ["CheXpert-v1.0-small/train/patient00002/study2/view2_lateral.jpg", "Female", "91", "Lateral", "",
              *_row(CHEXPERT_14, {"Lung Opacity": "1.0"})]]
    valid = [["CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", "Male", "73", "Frontal", "PA",
              *["1.0" if f == "Cardiomegaly" else "0.0" for f in CHEXPERT_14]]]
    write_csv(root / "train.csv", header, train)
    write_csv(root / "valid.csv", header, valid)
    for i, row in enumerate(train + valid):
        write_image(root / row[0].split("/", 1)[1], i, "JPEG")

    assert detect_dataset(str(root)).name == "chexpert"
    ingest_folder(root, settings, dagster_instance)  # file names repeat across patients: key by path
    got = {r.source_uri.split("CheXpert-v1.0-small/")[1]: r
           for b in list_batches(settings.home) for r in load_batch_records(settings.home, b)}
    one = got["train/patient00001/study1/view1_frontal.jpg"]
    two = got["train/patient00002/study2/view1_frontal.jpg"]
    side = got["train/patient00002/study2/view2_lateral.jpg"]
    val = got["valid/patient64541/study1/view1_frontal.jpg"]
    assert one.labels == ["Support Devices"]  # "No Finding" with a finding: the finding wins
    assert two.labels == ["Lung Opacity", "Fracture"] and two.extra["uncertain_labels"] == "Cardiomegaly"
    assert (one.view_position, side.view_position, val.view_position) == ("AP", "LATERAL", "PA")
    assert (one.split, val.split) == ("train", "validate") and val.labels == ["Cardiomegaly"]
    assert (two.sex, two.age_group, side.age_group) == ("female", "80-89", "90+")
    assert two.subject_key == side.subject_key != one.subject_key and two.study_id == side.study_id


def test_nih_data_entry_and_split_lists(tmp_path, settings, dagster_instance):
    root = tmp_path / "nih"
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]", ""]
    rows = [["00000001_000.png", "Cardiomegaly", 0, 1, 58, "M", "PA", 2682, 2749, 0.143, 0.143, ""],
            ["00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, 58, "M", "PA", 2894, 2729, 0.143, 0.143, ""],
            ["00000003_000.png", "Hernia|Infiltration|Effusion", 0, 3, 81, "F", "AP", 2500, 2048, 0.168, 0.168, ""],
            ["00000004_000.png", "No Finding", 0, 4, 82, "F", "PA", 2048, 2500, 0.168, 0.168, ""]]
    write_csv(root / "Data_Entry_2017.csv", header, rows)
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000004_000.png\n")
    (root / "test_list.txt").write_text("00000003_000.png\n")
    for i, row in enumerate(rows):
        write_image(root / "images_001" / "images" / row[0], i, "PNG")
    assert detect_dataset(str(root)).name == "nih"
    got = ingest_folder(root, settings, dagster_instance)
    assert got["00000001_001.png"].labels == ["Cardiomegaly"]
    assert got["00000001_001.png"].extra["unmapped_labels"] == "Emphysema"
    assert got["00000003_000.png"].labels == ["Lung Opacity", "Pleural Effusion"]
    assert got["00000004_000.png"].labels == ["No Finding"]
    assert [got[r[0]].split for r in rows] == ["train", "train", "test", "train"]
    assert [got[r[0]].view_position for r in rows] == ["PA", "PA", "AP", "PA"]
    assert got["00000003_000.png"].sex == "female" and got["00000003_000.png"].age_group == "80-89"
    assert got["00000001_000.png"].subject_key == got["00000001_001.png"].subject_key
    assert got["00000001_000.png"].study_id != got["00000001_001.png"].study_id  # two follow-up visits


def test_vindr_cxr_keeps_every_radiologist(tmp_path, settings, dagster_instance):
    root = tmp_path / "vindr-cxr" / "1.0.0"
    train_id, test_id = "000434271f63a053c4128a0ba6352c7f", "002a34c58c5b758217ed1f584ccbcfe9"
    write_csv(root / "annotations" / "image_labels_train.csv", ["image_id", "rad_id", *VINDR_28], [
        [train_id, "R2", *_row(VINDR_28, {f: "0" for f in VINDR_28} | {"Cardiomegaly": "1", "Aortic enlargement": "1"})],
        [train_id, "R3", *_row(VINDR_28, {f: "0" for f in VINDR_28} | {"Cardiomegaly": "1", "Nodule/Mass": "1"})],
        [train_id, "R6", *_row(VINDR_28, {f: "0" for f in VINDR_28} | {"No finding": "1"})]])
    write_csv(root / "annotations" / "image_labels_test.csv", ["image_id", *VINDR_28], [
        [test_id, *_row(VINDR_28, {f: "0" for f in VINDR_28} | {"Pleural effusion": "1", "Tuberculosis": "1"})]])
    write_dicom(root / "train" / f"{train_id}.dicom", 1)
    write_dicom(root / "test" / f"{test_id}.dicom", 2)
    assert detect_dataset(str(root)).name == "vindr-cxr"
    got = ingest_folder(root, settings, dagster_instance)
    train, test = got[f"{train_id}.dicom"], got[f"{test_id}.dicom"]
    assert train.labels == ["Cardiomegaly"] and train.split == "train"
    assert train.extra["uncertain_labels"] == "Lung Lesion"  # one of three raters: uncertain
    assert json.loads(train.extra["rater_labels"]) == {"R2": ["Aortic enlargement", "Cardiomegaly"],
                                                       "R3": ["Cardiomegaly", "Nodule/Mass"], "R6": ["No finding"]}
    weights = json.loads(train.extra["label_weights"])
    assert weights["Cardiomegaly"] == pytest.approx(2 / 3, abs=1e-4) and weights["No finding"] == pytest.approx(1 / 3, abs=1e-4)
    assert test.labels == ["Pleural Effusion"] and test.split == "test"
    assert test.extra["unmapped_labels"] == "Tuberculosis"


def write_scin(root) -> None:
    """Three photographs of two SCIN cases in the published layout (FST3 female, unknown-type male)."""
    cases_header = ["case_id", "source", "release", "year", "age_group", "sex_at_birth", "fitzpatrick_skin_type",
                    "race_ethnicity_white", "race_ethnicity_black_or_african_american", "body_parts_arm",
                    "body_parts_palm", "related_category", "condition_duration", "image_1_path", "image_2_path",
                    "image_3_path", "image_1_shot_type", "image_2_shot_type", "image_3_shot_type"]
    cases = [["-1000600354148496558", "USER", "SCIN", "2023", "AGE_30_TO_39", "FEMALE", "FST3", "", "YES", "YES", "",
              "", "ONE_TO_FOUR_WEEKS", "dataset/images/-3205742176803893704.png",
              "dataset/images/-1234567890123456789.png", "", "CLOSE_UP", "AT_AN_ANGLE", ""],
             ["-1002039107727665188", "USER", "SCIN", "2023", "AGE_18_TO_29", "MALE", "", "YES", "", "", "YES",
              "", "", "dataset/images/-4762289084741430925.png", "", "", "AT_DISTANCE", "", ""]]
    labels_header = ["case_id", "dermatologist_gradable_for_skin_condition_1", "dermatologist_skin_condition_on_label_name",
                     "dermatologist_skin_condition_confidence", "weighted_skin_condition_label",
                     "dermatologist_gradable_for_fitzpatrick_skin_type_1", "dermatologist_fitzpatrick_skin_type_label_1",
                     "dermatologist_fitzpatrick_skin_type_label_2", "dermatologist_fitzpatrick_skin_type_label_3",
                     "monk_skin_tone_label_india", "monk_skin_tone_label_us"]
    label_rows = [["-1000600354148496558", "DEFAULT_YES_IMAGE_QUALITY_SUFFICIENT",
                   "['Eczema', 'Allergic Contact Dermatitis', 'Insect Bite']", "[4, 3, 2]",
                   "{'Eczema': 0.41, 'Allergic Contact Dermatitis': 0.33, 'Insect Bite': 0.26}",
                   "DEFAULT_YES_FITZPATRICK_SKIN_TYPE", "FST4", "FST3", "", "4", "3"],
                  ["-1002039107727665188", "", "[]", "[]", "", "", "", "", "", "", ""]]
    write_csv(root / "dataset" / "scin_cases.csv", cases_header, cases)
    write_csv(root / "dataset" / "scin_labels.csv", labels_header, label_rows)
    for i, name in enumerate(["-3205742176803893704", "-1234567890123456789", "-4762289084741430925"]):
        write_image(root / "dataset" / "images" / f"{name}.png", i, "PNG-RGB")


def test_scin_cases_and_dermatologist_labels(tmp_path, settings, dagster_instance):
    root = tmp_path / "scin"
    write_scin(root)
    assert detect_dataset(str(root)).name == "scin"
    got = ingest_folder(root, settings, dagster_instance)
    close, angle, other = (got[f"{n}.png"] for n in ["-3205742176803893704", "-1234567890123456789", "-4762289084741430925"])
    assert close.labels == angle.labels == ["Eczema", "Allergic Contact Dermatitis", "Insect Bite"]
    assert json.loads(close.extra["label_weights"]) == {"Eczema": 0.41, "Allergic Contact Dermatitis": 0.33, "Insect Bite": 0.26}
    assert (close.view_position, angle.view_position, other.view_position) == ("CLOSE_UP", "AT_AN_ANGLE", "AT_DISTANCE")
    assert (close.sex, close.age_group, close.skin_type) == ("female", "AGE_30_TO_39", "FST3")  # columns
    assert {k: close.extra[k] for k in ("dermatologist_fitzpatrick_skin_types", "monk_skin_tone_us",
                                        "monk_skin_tone_india")} == {
        "dermatologist_fitzpatrick_skin_types": "FST4|FST3", "monk_skin_tone_us": "3", "monk_skin_tone_india": "4"}
    assert close.extra["body_parts"] == "arm"
    assert not any(k.startswith("race") for k in close.extra)  # dropped as identifying
    assert other.labels == [] and (other.sex, other.skin_type) == ("male", None) and close.subject_key == angle.subject_key != other.subject_key


def test_generic_csv_still_works_and_dataset_override(tmp_path, settings, dagster_instance):
    root = tmp_path / "mine"
    write_image(root / "a.png", 1, "PNG")
    write_image(root / "b.png", 2, "PNG")
    (root / "labels.csv").write_text("path,labels,split,view\na.png,Edema,valid,pa\nb.png,Effusion,val,AP\n")
    assert detect_dataset(str(root)).name == "generic"
    got = ingest_folder(root, settings, dagster_instance)
    assert got["a.png"].labels == ["Edema"] and got["b.png"].labels == ["Pleural Effusion"]
    assert got["a.png"].split == got["b.png"].split == "validate" and got["a.png"].view_position == "PA"
    with pytest.raises(ValueError, match="known datasets: mimic-cxr, chexpert, nih, vindr-cxr, scin, generic"):
        get_adapter("padchest")


@pytest.mark.parametrize("value, name", [("validate", "validate"), ("valid", "validate"), ("VAL", "validate"),
                                         ("Train", "train"), ("test", "test"), ("fold3", "fold3"), ("", None)])
def test_split_names_are_one_name(value, name):
    assert normalize_split(value) == name


def test_unknown_split_is_rejected_with_the_known_ones(capsys):
    from medvec.cli import build_parser

    assert build_parser().parse_args(["eval", "--split", "valid"]).split == "validate"
    assert build_parser().parse_args(["search", "x", "--split", "val"]).split == ["validate"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--split", "holdout"])
    assert "known splits: train, validate, test" in capsys.readouterr().err
