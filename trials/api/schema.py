"""OpenAPI schema details drf-spectacular cannot infer (imported by ``trials.apps`` so they register)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import build_basic_type, build_choice_field
from drf_spectacular.types import OpenApiTypes

from trials.choices import ObservationSource


class ReaderSourceFieldExtension(OpenApiSerializerFieldExtension):
    """``LesionObservation.source``: responses list every source, requests only a reader's two."""

    target_class = "trials.api.serializers.ReaderSourceField"

    def map_serializer_field(self, auto_schema: Any, direction: str) -> dict[str, Any]:
        if direction == "request":
            field = self.target
            allowed = {value: label for value, label in ObservationSource.choices if value in field.WRITABLE}
            schema = {"type": "string", "enum": list(allowed)}
            schema["description"] = "\n".join(f"* `{value}` - {label}" for value, label in allowed.items())
            return schema
        return build_choice_field(self.target) or build_basic_type(OpenApiTypes.STR)  # type: ignore[return-value]
