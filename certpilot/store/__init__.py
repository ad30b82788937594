"""The inventory store: the only package that imports sqlmodel and SQLAlchemy.

Use :class:`Inventory` (and :class:`AuditLog` for the audit hash chain); they take and return
the domain dataclasses of ``certpilot.domain``.
Importing this package connects to nothing.
"""

from certpilot.store.audit import AuditLog
from certpilot.store.inventory import Inventory

__all__ = ["AuditLog", "Inventory"]
