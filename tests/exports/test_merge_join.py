"""The streaming merge-joins of trials.exports.queries against a naive in-memory join (hypothesis)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from trials.exports.queries import group_by_patient, visits_with_observations

DAY0 = dt.date(2024, 1, 1)

# A visit: (patient id, day offset, visit id); observations point at visits, some at visits not exported.
visit_keys = st.lists(
    st.tuples(st.integers(1, 6), st.integers(0, 400), st.integers(1, 10_000)),
    unique_by=lambda v: v[2],
    max_size=30,
)


def _visit(key: tuple[int, int, int]) -> dict:
    return {"patient_id": key[0], "scan_date": DAY0 + dt.timedelta(days=key[1]), "pk": key[2]}


@given(visit_keys, visit_keys, st.lists(st.integers(0, 5), max_size=60))
def test_visits_with_observations_equals_naive_join(exported, orphans, counts) -> None:
    visits = sorted((_visit(k) for k in exported), key=lambda v: (v["patient_id"], v["scan_date"], v["pk"]))
    exported_ids = {v["pk"] for v in visits}
    # Observations of exported visits plus orphans (visits missing from the visit stream).
    targets = visits + [_visit(k) for k in orphans if k[2] not in exported_ids]
    observations = []
    for n, visit in enumerate(targets):
        for i in range(counts[n] if n < len(counts) else 1):
            observations.append(
                {
                    "patient_id": visit["patient_id"],
                    "scan_date": visit["scan_date"],
                    "timepoint_id": visit["pk"],
                    "i": i,
                }
            )
    observations.sort(key=lambda o: (o["patient_id"], o["scan_date"], o["timepoint_id"], o["i"]))
    joined = list(visits_with_observations(iter(visits), iter(observations)))
    assert [v for v, _ in joined] == visits
    for visit, found in joined:
        assert found == [o for o in observations if o["timepoint_id"] == visit["pk"]]


@given(st.lists(st.integers(1, 20), unique=True, max_size=15), visit_keys)
def test_group_by_patient_equals_naive_grouping(patient_ids, keys) -> None:
    patients = [{"pk": pk} for pk in sorted(patient_ids)]
    visits = sorted((_visit(k) for k in keys), key=lambda v: (v["patient_id"], v["scan_date"], v["pk"]))
    grouped = list(group_by_patient(iter(patients), ((v, []) for v in visits)))
    assert [p for p, _ in grouped] == patients
    for patient, pairs in grouped:
        assert [v for v, _ in pairs] == [v for v in visits if v["patient_id"] == patient["pk"]]
