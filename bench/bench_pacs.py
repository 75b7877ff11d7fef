"""DICOM receive speed: a 512 x 512 x 208 MR series sent by dcmtk's storescu to the MetTrack listener,
against Orthanc receiving the same series on the same machine.

Target (issue 17): the series received by C-STORE in under 10 s. Timed, best of ``REPEATS``:

* ``listener_receive_s``: storescu's run against the listener (association, 208 C-STOREs each written and
  fsync'ed to the spool before it is acknowledged, release);
* ``listener_ingested_s``: from the start until the completed study has been validated, de-identified and
  stored as an upload is (``segmentation.io.ingest_series``, the stage ``receive_study`` hands to
  ``upload_series``; no database row here);
* ``orthanc_receive_s``: storescu's run against Orthanc (Debian's package, storage in a temporary
  folder), and the ratio of the listener's receive time to it.

Needs Orthanc and dcmtk (``scripts/ensure-pacs-tools.sh``); no database.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segmentation.io import ingest_series
from segmentation.listener import Caller, DicomListener, ListenerConfig
from segmentation.spool import Sender
from segmentation.synthetic_mr import write_dicom_series

SHAPE = (208, 512, 512)  # slices, rows, columns
SPACING_MM = (0.5, 0.5, 1.0)
REPEATS = 3
TARGET_S = 10.0
CALLING = "BENCHSCU"


def _series(folder: Path) -> list[Path]:
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 1200, SHAPE, dtype=np.int16)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(SPACING_MM)
    return write_dicom_series(image, folder, patient_id="BENCH", series_description="T1 MPRAGE post-contrast")


def _storescu(port: int, folder: Path, called: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["storescu", "-aet", CALLING, "-aec", called, "+sd", "127.0.0.1", str(port), str(folder)],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listener_runs(series_dir: Path, work: Path) -> tuple[float, float]:
    done = threading.Event()

    def on_study(folder: Path, sender: Sender) -> None:
        target = work / f"stored-{time.time_ns()}"
        ingest_series(next(p for p in folder.iterdir() if p.is_dir()), target, subject_id="BENCH-001")
        shutil.rmtree(folder)
        shutil.rmtree(target)
        done.set()

    config = ListenerConfig(
        ae_title="METTRACK",
        port=_free_port(),
        host="127.0.0.1",
        spool_dir=work / "spool",
        allowed_callers=(Caller(CALLING, "127.0.0.1"),),
        quiet_period_s=60,
        poll_s=0.05,
    )
    listener = DicomListener(config, on_study)
    listener.start()
    receive, ingested = [], []
    try:
        for _ in range(REPEATS):
            done.clear()
            started = time.perf_counter()
            receive.append(_storescu(listener.port, series_dir, "METTRACK"))
            done.wait(300)
            ingested.append(time.perf_counter() - started)
    finally:
        listener.stop()
    return min(receive), min(ingested)


def _orthanc_runs(series_dir: Path, work: Path) -> float:
    import json
    import socket

    port, http = _free_port(), _free_port()
    config = {
        "StorageDirectory": str(work / "orthanc"),
        "IndexDirectory": str(work / "orthanc"),
        "HttpPort": http,
        "DicomPort": port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowEcho": False,
        "DicomCheckCalledAeTitle": True,
        "DicomModalities": {"bench": [CALLING, "127.0.0.1", 104]},
    }
    (work / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        ["/usr/sbin/Orthanc", str(work / "orthanc.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        return min(_storescu(port, series_dir, "ORTHANC") for _ in range(REPEATS))
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    if shutil.which("storescu") is None or not Path("/usr/sbin/Orthanc").exists():
        print("skipped: Orthanc or dcmtk missing (scripts/ensure-pacs-tools.sh)")
        return
    with tempfile.TemporaryDirectory(prefix="mettrack-bench-pacs-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        _series(work / "series")
        print(f"series {SHAPE[2]} x {SHAPE[1]} x {SHAPE[0]} written in {time.perf_counter() - started:.1f} s")
        receive_s, ingested_s = _listener_runs(work / "series", work)
        orthanc_s = _orthanc_runs(work / "series", work)
    verdict = "PASS" if receive_s < TARGET_S else "FAIL"
    print(f"listener_receive_s   {receive_s:7.2f}  (target < {TARGET_S:.0f} s: {verdict})")
    print(f"listener_ingested_s  {ingested_s:7.2f}  (received, validated, de-identified, stored)")
    print(f"orthanc_receive_s    {orthanc_s:7.2f}")
    print(f"ratio listener/orthanc receive: {receive_s / orthanc_s:.2f}")


if __name__ == "__main__":
    main()
