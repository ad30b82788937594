"""Who owns a certificate: an ``owner`` label for every inventory item.

Pure. The first source of truth that has an answer wins:

1. the item's own labels (``owner``, else ``team``): set in the target's config, a Kubernetes
   label or annotation, an OpenBao secret's custom metadata;
2. the first :class:`OwnerRule` that matches: shell globs over the certificate's names and the
   endpoint's host (a DNS zone: ``*.pay.example.com``), over the location ref (a store path:
   ``openbao://bao/secret/payments/*``, ``file:///etc/nginx/pay/*``), and a source;
3. the default owner, when one is configured.

The label feeds ``certpilot_item_info{owner}``, the alert rules' ``owner`` and the Slack bot's
routing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

from certpilot.domain.model import Observation


@dataclass(frozen=True, slots=True)
class OwnerRule:
    owner: str
    names: tuple[str, ...] = ()
    refs: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def matches(self, o: Observation) -> bool:
        if self.sources and o.source not in self.sources:
            return False
        if self.refs and not any(fnmatchcase(o.ref, p) for p in self.refs):
            return False
        if self.names:
            names = [*_names(o)]
            if not any(fnmatchcase(n, p.lower()) for p in self.names for n in names):
                return False
        return bool(self.names or self.refs or self.sources)


def _names(o: Observation) -> Iterable[str]:
    if o.leaf is not None:
        yield from (n.lower() for n in o.leaf.sans)
        if o.leaf.subject_cn:
            yield o.leaf.subject_cn.lower()
    if o.ref.startswith("tls://"):
        hostport, _, sni = o.ref.removeprefix("tls://").partition("#")
        yield hostport.rsplit(":", 1)[0].strip("[]").lower()
        if sni:
            yield sni.lower()


def assign_owners(
    observations: Sequence[Observation], rules: Sequence[OwnerRule], default: str | None = None
) -> list[Observation]:
    """``observations`` with an ``owner`` label wherever one can be found (see above)."""
    out: list[Observation] = []
    for o in observations:
        if o.labels.get("owner"):
            out.append(o)
            continue
        owner = o.labels.get("team") or next((r.owner for r in rules if r.matches(o)), default)
        out.append(replace(o, labels={**o.labels, "owner": owner}) if owner else o)
    return out


__all__ = ["OwnerRule", "assign_owners"]
