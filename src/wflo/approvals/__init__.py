"""Human approval: policies, the durable inbox, decisions, notifications."""

from ._api import Approvals, Decision, aapproval, approval, approvals, inbox
from ._guard import ApprovalGuard, approval_id_for
from ._inbox import ApprovalRequest, Inbox
from ._notify import wait_for_notifications
from ._params import action_text
from ._policy import Approval, action_hash, parse_duration
from ._records import approval_records

__all__ = [
    "Approval",
    "ApprovalGuard",
    "ApprovalRequest",
    "Approvals",
    "Decision",
    "Inbox",
    "aapproval",
    "action_hash",
    "action_text",
    "approval",
    "approval_id_for",
    "approval_records",
    "approvals",
    "inbox",
    "parse_duration",
    "wait_for_notifications",
]
