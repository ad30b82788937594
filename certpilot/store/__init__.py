"""The inventory store: the only package that imports sqlmodel and SQLAlchemy.

Use :class:`Inventory`; it takes and returns the domain dataclasses of ``certpilot.domain``.
Importing this package connects to nothing.
"""

from certpilot.store.inventory import Inventory

__all__ = ["Inventory"]
