"""Merchant and campaign names and certification schemes held to the rules of a `Label`.

Up to this revision they were free text: a name could hold a NUL, a line break, a bidirectional
override. From now on they are `engine.model.Label`s (`engine.limits.LABEL_PATTERN`): no control
character (C0, DEL, C1), no line or paragraph separator, no bidirectional control (embeddings,
overrides, isolates, the LRM, RLM and ALM marks), no invisible format character (zero-width
space, word joiner, invisible operators, byte-order mark), and at least one visible character. A stored record is read back through the same
models, so every stored record that breaks the rules is mended here: each refused character
becomes U+FFFD (the replacement character: something was there), and a name with nothing visible
but those becomes the record's id (a scheme: U+FFFD). Records that keep the rules are not touched,
and nothing else in them changes; each mended record is named in the migration's log (so the
operator can record the change: the audit log holds none). The rules are written out here as
they were at this revision.

The downgrade leaves the mended records as they are (the rules before took them too).

Revision ID: 20261211_label_names
Revises: 20261210_ui_sessions_ended
"""
import json
import logging
import re
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '20261211_label_names'
down_revision = '20261210_ui_sessions_ended'
branch_labels = None
depends_on = None

_log = logging.getLogger('alembic.runtime.migration')

_REFUSED = re.compile(
    '[\x00-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]'
)
# Kept, but not what makes a name visible: spaces, soft hyphens, zero-width (non-)joiners, Hangul fillers.
_UNSEEN = re.compile('[\\s\xad\u115f\u1160\u200c\u200d\u3164\uffa0]')
# Each table holding records, with the columns that name one row.
_TABLES = {
    'merchant': ('id',),
    'merchant_version': ('merchant_id', 'version'),
    'campaign_version': ('campaign_id', 'version'),
}


def _label(text: Any, fallback: str) -> Any:
    if not isinstance(text, str):
        return text
    visible = _UNSEEN.sub('', _REFUSED.sub('', text))
    return _REFUSED.sub('\ufffd', text) if visible else fallback


def _mended(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    if 'name' in out:
        out['name'] = _label(out['name'], str(out.get('id', '\ufffd')))
    certifications = out.get('ethical_certifications')
    if isinstance(certifications, list):
        out['ethical_certifications'] = [
            {**c, 'scheme': _label(c.get('scheme'), '\ufffd')} if isinstance(c, dict) else c for c in certifications
        ]
    return out


def upgrade() -> None:
    bind = op.get_bind()
    for table, keys in _TABLES.items():
        where = ' AND '.join(f'{k} = :{k}' for k in keys)
        for row in bind.execute(sa.text(f'SELECT {", ".join(keys)}, record_json FROM {table}')).mappings().all():
            record = json.loads(row['record_json'])
            mended = _mended(record)
            if mended != record:
                _log.warning('mended a name or scheme in %s %s', table, ', '.join(str(row[k]) for k in keys))
                mended_json = json.dumps(mended, ensure_ascii=False, separators=(',', ':'))
                bind.execute(
                    sa.text(f'UPDATE {table} SET record_json = :record_json WHERE {where}'),
                    {**{k: row[k] for k in keys}, 'record_json': mended_json},
                )


def downgrade() -> None:
    pass
