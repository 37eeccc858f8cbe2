"""The directory's read (SPEC §10): the current catalog and the campaigns' budget meters, without
the sequencer lock (`Ledger.read_view`); engine/directory.py decides what a resident sees."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select

from engine.model import Campaign, Merchant
from engine.store.ledger import Ledger
from engine.store.models import CampaignRow


def directory_state(ledger: Ledger) -> tuple[Mapping[str, Merchant], Mapping[str, Campaign], dict[str, int]]:
    """Merchants and current campaign versions by id, and each campaign's net issued points."""
    with ledger.read_view() as view:
        meters = {
            row.id: row.issued_net for row in view.session.execute(select(CampaignRow.id, CampaignRow.issued_net))
        }
        return view.catalog.merchants, view.catalog.campaigns, meters
