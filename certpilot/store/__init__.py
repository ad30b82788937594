"""The inventory store: the only package that imports sqlmodel and SQLAlchemy.

Use :class:`Inventory` (and :class:`AuditLog` for the audit hash chain, :class:`JobStore` for
remediation jobs); they take and return the domain dataclasses of ``certpilot.domain`` (jobs:
:class:`~certpilot.store.jobs.Job`).
Importing this package connects to nothing.
"""

from certpilot.store.audit import AuditLog
from certpilot.store.inventory import Inventory
from certpilot.store.jobs import Job, JobConflict, JobNotFound, JobStore, NewJob

__all__ = ["AuditLog", "Inventory", "Job", "JobConflict", "JobNotFound", "JobStore", "NewJob"]
