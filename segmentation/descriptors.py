"""Clean free-text series descriptors before anything stores or prints them (DICOM PS3.15 Annex E,
"Clean Descriptors Option": replace with values of similar meaning known not to contain identifying
information).

A Series Description such as ``AX T1 MPRAGE +C`` tells a reader which sequence a series is, but scanners
let technologists type anything there, and sites do write patient names, birth dates or record numbers
into it (``DOE JOHN 1965 T1 POST``). MetTrack keeps only the words of a vocabulary of MR acquisition terms
and short numbers (slice thickness, echo numbers); every other word becomes ``*``. The result is safe
to store in a row, show in the dashboard and the API, write in an error message, a log line or the
audit trail. An empty or wholly unknown description gives ``""`` (the dashboard then shows "series").
"""

from __future__ import annotations

import re

#: Words an MR series description may keep (compared in upper case): planes, weightings, sequence
#: families and vendor names of sequences, contrast and processing terms. Words that are also
#: common names (Long, Short, Trace, Base, Cal) are left out on purpose.
MR_TERMS: frozenset[str] = frozenset(  # noqa: SIM905 - a block of words reads best as one
    [
        "AX",
        "AXI",
        "AXIAL",
        "SAG",
        "SAGITTAL",
        "COR",
        "CORONAL",
        "TRA",
        "TRANS",
        "TRANSVERSE",
        "OBL",
        "OBLIQUE",
        "ISO",
        "ISOTROPIC",
        "2D",
        "3D",
        "4D",
        "T1",
        "T2",
        "T1W",
        "T2W",
        "T2*",
        "PD",
        "PDW",
        "FLAIR",
        "DIR",
        "STIR",
        "DWI",
        "DTI",
        "ADC",
        "EADC",
        "SWI",
        "SWAN",
        "PWI",
        "PERF",
        "PERFUSION",
        "DSC",
        "DCE",
        "ASL",
        "MPRAGE",
        "MP-RAGE",
        "MP2RAGE",
        "MPR",
        "SPGR",
        "FSPGR",
        "BRAVO",
        "VIBE",
        "LAVA",
        "THRIVE",
        "TFE",
        "FFE",
        "TSE",
        "FSE",
        "SE",
        "GRE",
        "GR",
        "EPI",
        "IR",
        "SPACE",
        "CUBE",
        "VISTA",
        "MIP",
        "MINIP",
        "TOF",
        "MRA",
        "MRV",
        "CISS",
        "FIESTA",
        "HASTE",
        "BLADE",
        "PROPELLER",
        "MOCO",
        "NAV",
        "NAVIGATED",
        "POST",
        "PRE",
        "GD",
        "GAD",
        "GADO",
        "GADOLINIUM",
        "C",
        "+C",
        "C+",
        "-C",
        "CE",
        "CONTRAST",
        "ENH",
        "ENHANCED",
        "WITH",
        "W",
        "WO",
        "WITHOUT",
        "AND",
        "FS",
        "FATSAT",
        "FAT",
        "SAT",
        "SATURATION",
        "NOFS",
        "WATER",
        "DIXON",
        "IN",
        "OUT",
        "OPP",
        "PHASE",
        "MAG",
        "MAGNITUDE",
        "SUB",
        "SUBTRACTION",
        "RECON",
        "REFORMAT",
        "MPR",
        "MPRS",
        "THIN",
        "THICK",
        "HR",
        "HIRES",
        "LOWRES",
        "NORM",
        "ND",
        "DIS2D",
        "DIS3D",
        "LOC",
        "LOCALIZER",
        "LOCALISER",
        "SCOUT",
        "SURVEY",
        "CALIBRATION",
        "SENSE",
        "ASSET",
        "GRAPPA",
        "IPAT",
        "ARC",
        "BRAIN",
        "HEAD",
        "SKULL",
        "NECK",
        "ROUTINE",
        "MET",
        "METS",
        "METASTASIS",
        "METASTASES",
        "TUMOR",
        "TUMOUR",
        "DELAYED",
        "EARLY",
        "LATE",
        "DYNAMIC",
        "MULTI",
        "SINGLE",
        "SHOT",
        "FAST",
        "TURBO",
        "REPEAT",
        "RPT",
    ]
)

#: Short numbers (slice thickness, a repeat number) with an optional unit; longer digit runs are dropped
#: because dates, record numbers and IDs are digit runs.
_SHORT_NUMBER = re.compile(r"\d{1,3}(?:\.\d{1,2})?(?:MM|MS|S|T|X)?")
_WORD = re.compile(r"[A-Za-z0-9+*.\-]+")  # "_", "^", "/", spaces separate words

#: Longest cleaned description (a column of ``ImagingSeries`` and a line of a message).
MAX_LENGTH = 64


def _kept(word: str) -> bool:
    upper = word.upper()
    if upper in MR_TERMS or _SHORT_NUMBER.fullmatch(upper):
        return True
    # "post-contrast", "T1-FLAIR": a hyphenated word is kept when each of its parts is.
    parts = upper.split("-")
    return len(parts) > 1 and all(part in MR_TERMS or _SHORT_NUMBER.fullmatch(part) for part in parts)


def clean_series_description(text: str | None) -> str:
    """A series description reduced to MR terms and short numbers; other words become ``*``.

    Args:
        text: The description as the scanner wrote it (DICOM (0008,103E)), or None.

    Returns:
        The cleaned words separated by single spaces, at most :data:`MAX_LENGTH` characters; ``""``
        when no word could be kept.

    >>> clean_series_description("AX T1 MPRAGE +C")
    'AX T1 MPRAGE +C'
    >>> clean_series_description("DOE^JOHN 19650312 t1_mprage_post")
    '* t1 mprage post'
    """
    words = [word if _kept(word) else "*" for word in _WORD.findall(text or "")]
    if not any(w != "*" for w in words):
        return ""
    cleaned = " ".join(words)
    while "* *" in cleaned:  # one star stands for any run of removed words
        cleaned = cleaned.replace("* *", "*")
    return cleaned[:MAX_LENGTH].strip()


__all__ = ["MAX_LENGTH", "MR_TERMS", "clean_series_description"]
