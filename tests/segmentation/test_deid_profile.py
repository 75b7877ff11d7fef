"""The de-identification rules are the standard's table: segmentation/deid_profile.tsv against another copy.

Oracle: dicom-anonymizer (a maintained PyPI package, pinned in the dev extras) ships PS3.15 Table E.1-1
as data, one list of tags per Basic Profile action, edition by edition. MetTrack's table (the 2024b
edition) must hold exactly the same attributes with the same actions as that package's 2024b table.
Then what the table asks is checked on real files: Icon Image Sequence and Timezone Offset From UTC
removed, the options declared, the contrast agent cleaned as the README says.
"""

from __future__ import annotations

import pydicom
import pytest
from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from segmentation.deid import (
    CONTRAST_AGENT_DUMMY,
    clean_contrast_agent,
    deidentify_dataset,
    profile_table,
)
from segmentation.io import ingest_series

#: dicom-anonymizer's list name -> the Basic Profile action it holds.
CATEGORIES = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


def _hex_with_mask(value: int, mask: int) -> str:
    """Four hex digits, ``X`` where the mask leaves a digit free (0x5000 / 0xFF00 -> ``50XX``)."""
    return "".join(f"{(value >> shift) & 0xF:X}" if (mask >> shift) & 0xF else "X" for shift in (12, 8, 4, 0))


def _their_table() -> dict[str, str]:
    tables = dicom_anonymization_database_selector("dicomfields_2024b")
    actions: dict[str, str] = {}
    for category, action in CATEGORIES.items():
        for entry in tables[category]:
            if len(entry) == 2:  # (group, element)
                key = f"{entry[0]:04X}{entry[1]:04X}"
            else:  # (group, element, group mask, element mask)
                key = _hex_with_mask(entry[0], entry[2]) + _hex_with_mask(entry[1], entry[3])
            assert key not in actions, key
            actions[key] = action
    return actions


def test_the_table_is_the_standards_table_as_dicom_anonymizer_ships_it() -> None:
    ours = {tag: row.basic for tag, row in profile_table().items()}
    theirs = _their_table()
    assert len(ours) >= 600
    assert sorted(set(ours) - set(theirs)) == []
    assert sorted(set(theirs) - set(ours)) == []
    assert {tag: (a, theirs[tag]) for tag, a in ours.items() if a != theirs[tag]} == {}


def test_every_option_column_holds_only_the_standards_actions() -> None:
    table = profile_table()
    for row in table.values():
        assert set(row.options.values()) <= {"K", "C"}, row
    # what the options MetTrack declares rest on
    assert table["0020000D"].options["retain_uids"] == "K"  # Study Instance UID
    assert table["00180010"].options["clean_descriptors"] == "C"  # Contrast/Bolus Agent


def _with_extras(path) -> None:
    ds = pydicom.dcmread(path)
    icon = Dataset()
    icon.Rows = icon.Columns = 1
    ds.IconImageSequence = Sequence([icon])
    ds.TimezoneOffsetFromUTC = "+0100"
    ds.ContrastBolusAgent = "Gadovist 7.5 ml, given by Dr House"
    ds.save_as(path, enforce_file_format=True)


def test_icon_timezone_removed_contrast_cleaned_and_options_declared(tmp_path, write_series) -> None:
    folder, files = write_series()
    for path in files:
        _with_extras(path)
    stored = ingest_series(folder, tmp_path / "store", subject_id="BM-007")
    ds = pydicom.dcmread(stored.series.source_paths[0])
    assert "IconImageSequence" not in ds
    assert "TimezoneOffsetFromUTC" not in ds
    assert ds.ContrastBolusAgent == CONTRAST_AGENT_DUMMY  # free text: only "an agent was given" stays
    assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    codes = {(item.CodeValue, item.CodingSchemeDesignator) for item in ds.DeidentificationMethodCodeSequence}
    assert codes == {("113100", "DCM"), ("113110", "DCM"), ("113105", "DCM")}


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("GADOLINIUM", True),
        ("Gadovist 7.5 ml", True),
        ("0.1 mmol/kg gadobutrol IV", True),
        ("MultiHance (gadobenate dimeglumine)", True),
        ("Dotarem, given by Dr House", False),
        ("Jane Doe", False),
    ],
)
def test_contrast_agent_is_kept_only_when_it_names_an_agent(value, kept) -> None:
    assert clean_contrast_agent(value) == (value if kept else CONTRAST_AGENT_DUMMY)


def test_table_actions_on_attributes_the_old_keyword_rules_missed() -> None:
    """Attributes that keyword fragments handled wrongly or not at all now follow the table."""
    ds = Dataset()
    ds.DimensionOrganizationType = "3D"  # not in the table: kept ("Organization" no longer matches)
    ds.VerifyingOrganization = "Saint Elsewhere Hospital"  # D: a dummy
    ds.ProtocolName = "Jane Doe research protocol"  # X/D: removed outside enhanced images
    ds.StationName = "MRI-7"  # X/Z/D: emptied
    deidentify_dataset(ds, subject_id="BM-001")
    assert ds.DimensionOrganizationType == "3D"
    assert ds.VerifyingOrganization == "ANONYMIZED"
    assert "ProtocolName" not in ds
    assert "StationName" in ds and not ds.StationName


def test_uids_the_table_replaces_under_retain_uids_stay_consistent_across_files() -> None:
    """UID (0040,A124) is U even with Retain UIDs: replaced, the same way in every file of an upload."""
    shared: dict[str, str] = {}
    replaced = []
    for _ in range(2):
        ds = Dataset()
        ds.StudyInstanceUID = "1.2.3.4"  # retained (K under Retain UIDs)
        ds.add_new(0x0040A124, "UI", "1.2.3.99")  # UID: U, no K
        deidentify_dataset(ds, subject_id="BM-001", uid_map=shared)
        assert ds.StudyInstanceUID == "1.2.3.4"
        replaced.append(ds[0x0040A124].value)
    assert replaced[0] == replaced[1] != "1.2.3.99"
