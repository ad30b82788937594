"""Stored vs served vs issued: what no single scanner can see on its own.

Pure (DESIGN.md section 6): one scan cycle's observations in, the same observations out with
the problems the comparison finds added to the *served* ones:

* ``not_deployed``: a store (a file, an OpenBao/Vault secret, a Kubernetes Secret) holds a
  newer certificate for the same names (or the same key) than the endpoint serves: it was
  renewed and never deployed (or deployed and never reloaded).
* ``unmanaged``: an endpoint serves a certificate that is in no configured store and that
  certpilot did not issue: nobody renews it (only when at least one store was scanned, else
  every endpoint would be "unmanaged").

A served certificate and a stored one are the same *lineage* when they name exactly the same
identifiers (SANs, else the CN), or when they share the key (SPKI hash): renewals usually keep
the names and often the key. The newest stored member of a lineage is the one that should be
served.

``revoked`` (a CRL lists it) is :mod:`certpilot.domain.revocation`'s; ``unexpected_issuance``
(seen in CT, ordered by nobody) the CT watcher's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from certpilot.domain.model import Observation
from certpilot.domain.problems import Problem, ProblemCode
from certpilot.domain.x509 import CertInfo, iso

#: Sources whose certificates are at rest (stores) and served (endpoints).
STORED_SOURCES: frozenset[str] = frozenset({"file", "openbao", "k8s"})
SERVED_SOURCES: frozenset[str] = frozenset({"tls"})


def names_of(info: CertInfo) -> frozenset[str]:
    """The identifiers a certificate is for: its SANs, else its CN (lower case)."""
    names = {n.strip().lower().rstrip(".") for n in info.sans if n.strip()}
    if not names and info.subject_cn:
        names = {info.subject_cn.strip().lower()}
    return frozenset(names)


def _has(o: Observation, code: ProblemCode) -> bool:
    return any(p.code == code for p in o.problems)


def reconcile(
    observations: Sequence[Observation],
    *,
    issued: Iterable[str] = (),
    stores_scanned: bool | None = None,
) -> list[Observation]:
    """``observations`` with ``not_deployed`` / ``unmanaged`` added to served ones (see the
    module docstring). ``issued`` are fingerprints of certificates certpilot issued;
    ``stores_scanned`` says whether any store was part of the cycle (default: whether any
    stored certificate was observed)."""
    return Reconciler(observations, issued=issued, stores_scanned=stores_scanned).apply(
        observations
    )


class Reconciler:
    """:func:`reconcile` in two steps, for a cycle that records served observations in batches
    as they arrive: built once from the cycle's stored observations (any others given are
    ignored), then :meth:`apply` to each batch. ``apply`` of every batch equals ``reconcile``
    of them all together with the stored ones."""

    def __init__(
        self,
        stored: Iterable[Observation],
        *,
        issued: Iterable[str] = (),
        stores_scanned: bool | None = None,
    ) -> None:
        at_rest = [
            o
            for o in stored
            if o.source in STORED_SOURCES and o.leaf is not None and not o.leaf.is_ca
        ]
        self._stores_scanned = bool(at_rest) if stores_scanned is None else stores_scanned
        self._by_names: dict[frozenset[str], list[Observation]] = {}
        self._by_key: dict[str, list[Observation]] = {}
        for o in at_rest:
            assert o.leaf is not None
            self._by_names.setdefault(names_of(o.leaf), []).append(o)
            self._by_key.setdefault(o.leaf.spki_sha256, []).append(o)
        self._known = {o.leaf.fingerprint_sha256 for o in at_rest if o.leaf is not None}
        self._known |= {fp.lower() for fp in issued}

    def apply(self, observations: Iterable[Observation]) -> list[Observation]:
        """``observations`` with the problems the comparison finds added to the served ones."""
        return [self._one(o) for o in observations]

    def _one(self, o: Observation) -> Observation:
        if o.source not in SERVED_SOURCES or o.leaf is None:
            return o
        leaf = o.leaf
        added: list[Problem] = []
        lineage = {id(s): s for s in self._by_names.get(names_of(leaf), [])}
        lineage.update({id(s): s for s in self._by_key.get(leaf.spki_sha256, [])})
        newer = [
            s
            for s in lineage.values()
            if s.leaf is not None
            and s.leaf.fingerprint_sha256 != leaf.fingerprint_sha256
            and s.leaf.not_before > leaf.not_before
            and s.leaf.not_after > o.observed_at  # an expired "newer" one is no fix
            and s.leaf.not_before <= o.observed_at  # nor one not valid yet
        ]
        if newer and not _has(o, ProblemCode.NOT_DEPLOYED):
            best = max(newer, key=lambda s: s.leaf.not_before if s.leaf else leaf.not_before)
            assert best.leaf is not None
            added.append(
                Problem(
                    ProblemCode.NOT_DEPLOYED,
                    f"{best.ref} holds serial {best.leaf.serial} (valid from "
                    f"{iso(best.leaf.not_before)}), but this endpoint serves serial "
                    f"{leaf.serial} (valid from {iso(leaf.not_before)})",
                )
            )
        elif (
            self._stores_scanned
            and leaf.fingerprint_sha256 not in self._known
            and not _has(o, ProblemCode.UNMANAGED)
        ):
            added.append(
                Problem(
                    ProblemCode.UNMANAGED,
                    f"serial {leaf.serial} is served but is in no configured store "
                    "and was not issued by certpilot: nothing renews it",
                )
            )
        return replace(o, problems=(*o.problems, *added)) if added else o


__all__ = ["SERVED_SOURCES", "STORED_SOURCES", "Reconciler", "names_of", "reconcile"]
