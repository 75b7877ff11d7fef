"""Account pages: the password change (audited; it revokes the user's API tokens).

There is no password reset by e-mail: MetTrack sends no mail, so a reset link would be a dead end at
best. An administrator sets a new password in the admin (audited the same way).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import update_session_auth_hash
from django.contrib.auth.views import PasswordChangeView
from django.http import HttpResponse, HttpResponseRedirect

from trials.actions import accounts


class AuditedPasswordChangeView(PasswordChangeView):
    """Django's password change, saved through the action that audits it and revokes API tokens."""

    def form_valid(self, form: Any) -> HttpResponse:
        user = form.save(commit=False)
        accounts.change_password(
            user,
            actor=self.request.user,
            reason="changed by the user",
            correlation_id=getattr(self.request, "correlation_id", ""),
        )
        update_session_auth_hash(self.request, user)
        return HttpResponseRedirect(self.get_success_url())
