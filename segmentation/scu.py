"""DICOM to and from remote nodes: C-STORE SCU (pynetdicom), STOW-RS, QIDO-RS and WADO-RS (dicomweb-client).

Both raise :class:`SendError` with a message naming what failed (association refused, a non-success
status, an HTTP error, the node unreachable); the caller decides whether to try again. Nothing here
knows about the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
from pynetdicom import AE


class SendError(Exception):
    """Sending failed; the message says why (for the delivery's ``last_error``)."""


def send_cstore(
    paths: Sequence[Path],
    *,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    timeout_s: float = 30.0,
) -> int:
    """Send DICOM files to ``called_ae`` at ``host:port`` in one association; return how many were stored.

    Raises:
        SendError: the association could not be established, or an instance got a non-success status.
    """
    datasets = [pydicom.dcmread(path) for path in paths]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [str(ds.file_meta.TransferSyntaxUID) for ds in datasets][:1])
    try:
        assoc = ae.associate(host, port, ae_title=called_ae)
    except (OSError, RuntimeError) as exc:
        raise SendError(f"cannot reach {called_ae} at {host}:{port}: {exc}") from exc
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "unreachable or aborted"
        raise SendError(f"association with {called_ae} at {host}:{port} {why}")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code not in (0x0000, 0xB000, 0xB006, 0xB007):  # success or a warning
                raise SendError(
                    f"{called_ae} answered status 0x{code & 0xFFFF:04X} for a {ds.get('Modality', '')} object"
                    if code >= 0
                    else f"no answer from {called_ae} (connection lost)"
                )
    finally:
        if assoc.is_established:
            assoc.release()
    return len(datasets)


def send_stow(paths: Sequence[Path], *, url: str, headers: dict[str, str] | None = None) -> int:
    """Store DICOM files at a DICOMweb service's STOW-RS endpoint (``url`` is its root); return the count.

    Raises:
        SendError: the service could not be reached or refused an instance.
    """
    import requests
    from dicomweb_client.api import DICOMwebClient

    datasets = [pydicom.dcmread(path) for path in paths]
    client = DICOMwebClient(url=url, headers=headers or {}, chunk_size=2**30)
    try:
        answer = client.store_instances(datasets)
    except (requests.RequestException, OSError) as exc:
        raise SendError(f"STOW-RS to {url} failed: {exc}") from exc
    if answer.get("FailedSOPSequence"):  # some services answer it empty when nothing failed
        raise SendError(f"STOW-RS to {url}: {len(answer.FailedSOPSequence)} instance(s) refused")
    return len(datasets)


def find_studies(url: str, filters: dict[str, str], *, headers: dict[str, str] | None = None) -> list[str]:
    """Study Instance UIDs a DICOMweb service finds by QIDO-RS with ``filters`` (keyword -> value).

    Raises:
        SendError: the service could not be reached or refused the query.
    """
    import requests
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=url, headers=headers or {})
    try:
        found = client.search_for_studies(search_filters=filters, fields=["StudyInstanceUID"])
    except (requests.RequestException, OSError) as exc:
        raise SendError(f"QIDO-RS at {url} failed: {exc}") from exc
    return [str(item["0020000D"]["Value"][0]) for item in found if item.get("0020000D", {}).get("Value")]


def retrieve_study(url: str, study_uid: str, *, headers: dict[str, str] | None = None) -> list[bytes]:
    """Every instance of a study, retrieved by WADO-RS, as DICOM Part 10 bytes.

    Raises:
        SendError: the service could not be reached or refused the retrieval.
    """
    import io

    import requests
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=url, headers=headers or {})
    try:
        datasets = client.retrieve_study(study_uid)
    except (requests.RequestException, OSError) as exc:
        raise SendError(f"WADO-RS from {url} failed: {exc}") from exc
    encoded = []
    for ds in datasets:
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        encoded.append(buffer.getvalue())
    return encoded


__all__ = ["SendError", "find_studies", "retrieve_study", "send_cstore", "send_stow"]
