"""DICOMweb STOW-RS: ``POST /dicomweb/studies`` stores DICOM instances sent over HTTP (PS3.18 10.5).

The request is ``multipart/related; type="application/dicom"`` with one DICOM Part 10 file per part,
authenticated like the rest of the API (token or session) and allowed to the roles that may upload a
series (``manage_patients``). The instances go through the same path as those the DICOM listener
receives (``trials.actions.pacs.receive_instances``): grouped by study, routed to a patient and visit of
a trial where the user manages patients, stored and processed, or put in the inbox.

The answer is the STOW-RS response dataset as DICOM JSON (``application/dicom+json``): Referenced SOP
Sequence (0008,1199) for the accepted instances, Failed SOP Sequence (0008,1198) with a Failure Reason
(0008,1197) for the refused ones; 200 when all were accepted, 202 when some were refused, 409 when all
were. A request must carry a Content-Length (411 otherwise: Django reads no chunked body; with
dicomweb-client, a ``chunk_size`` above the request's size). The outcome of each study (routed, inbox, duplicate) is in ``GET /api/v1/inbox/``.
"""

from __future__ import annotations

import email.parser
import email.policy
from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from trials.actions.pacs import receive_instances
from trials.choices import ReceiveChannel
from trials.permissions import MANAGE_PATIENTS, ROLE_CAPABILITIES

#: DICOM JSON tags of the STOW-RS response (PS3.18 Table 10.5.3-1).
RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS = "00081150"
REFERENCED_SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"


def parse_multipart_related(content_type: str, body: bytes) -> list[bytes]:
    """The payloads of the ``application/dicom`` parts of a multipart/related body.

    Raises:
        ValueError: not multipart/related, or a part of another type.
    """
    if not content_type.lower().startswith("multipart/related"):
        raise ValueError("STOW-RS needs a multipart/related request.")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise ValueError("The multipart/related body has no parts.")
    payloads = []
    for part in message.iter_parts():  # type: ignore[attr-defined]
        if part.get_content_type() != "application/dicom":
            raise ValueError(f"Unsupported part type {part.get_content_type()}: send application/dicom.")
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            raise ValueError("A part of the request has no DICOM content.")
        payloads.append(payload)
    return payloads


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


class StowView(APIView):
    """``POST /dicomweb/studies``: store instances (STOW-RS)."""

    permission_classes = [IsAuthenticated]
    parser_classes: list[Any] = []

    @extend_schema(
        request={"multipart/related": OpenApiTypes.BINARY},
        responses={(code, "application/dicom+json"): OpenApiTypes.OBJECT for code in (200, 202, 409)},
        description="STOW-RS (PS3.18 10.5): store DICOM instances; routed like those the listener receives.",
    )
    def post(self, request: Request) -> Response:
        user: Any = request.user
        if user.is_superuser:
            only_trials = None
        else:
            roles = [role for role, caps in ROLE_CAPABILITIES.items() if MANAGE_PATIENTS in caps]
            only_trials = set(user.memberships.filter(role__in=roles).values_list("trial_id", flat=True))
            if not only_trials:
                return Response({"detail": "Your roles do not allow storing studies."}, status=403)
        if not request.META.get("CONTENT_LENGTH"):
            # Django reads no body without a length (a chunked request arrives empty): say so clearly.
            return Response(
                {"detail": "Send the request with a Content-Length (no chunked transfer encoding)."},
                status=status.HTTP_411_LENGTH_REQUIRED,
            )
        limit = int(getattr(settings, "PIPELINE_MAX_UPLOAD_BYTES", 2 * 1024**3))
        if int(request.META.get("CONTENT_LENGTH") or 0) > limit:
            return Response({"detail": "The request is larger than the upload limit."}, status=413)
        try:
            parts = parse_multipart_related(request.content_type or "", request._request.body)
        except ValueError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE)
        if not parts:
            return Response({"detail": "The request holds no instance."}, status=400)
        result = receive_instances(
            parts,
            channel=ReceiveChannel.STOW,
            sender_ae_title="",
            sender_host=f"{user.get_username()}@{request.META.get('REMOTE_ADDR', '')}"[:255],
            only_trials=only_trials,
            actor=user,
        )
        body: dict[str, Any] = {}
        if result.studies:
            body[RETRIEVE_URL] = {
                "vr": "UR",
                "Value": [request.build_absolute_uri(f"/api/v1/inbox/{result.studies[0].pk}/")],
            }
        if result.accepted:
            body[REFERENCED_SOP_SEQUENCE] = {
                "vr": "SQ",
                "Value": [
                    {REFERENCED_SOP_CLASS: _ui(cls), REFERENCED_SOP_INSTANCE: _ui(uid)}
                    for cls, uid in result.accepted
                ],
            }
        if result.failed:
            body[FAILED_SOP_SEQUENCE] = {
                "vr": "SQ",
                "Value": [
                    {
                        REFERENCED_SOP_CLASS: _ui(cls),
                        REFERENCED_SOP_INSTANCE: _ui(uid),
                        FAILURE_REASON: {"vr": "US", "Value": [code]},
                    }
                    for cls, uid, code in result.failed
                ],
            }
        code = 200 if not result.failed else (202 if result.accepted else 409)
        return Response(body, status=code, content_type="application/dicom+json")
