"""MetTrack's clinical core: lesion measurement, matching across visits and the RANO-BM engine.

A pure package: it never imports Django, Celery or the service layer (an import-linter contract keeps
it so). Everything takes arrays/images plus :class:`rano.settings.ResponseSettings` and returns frozen
dataclasses; nothing is saved here.
"""

from __future__ import annotations

#: Version of the rules engine, stored with every assessment so that a result can be reproduced.
ENGINE_VERSION = "rano-bm-engine 1.0.0"

__all__ = ["ENGINE_VERSION"]
