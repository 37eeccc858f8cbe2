"""Settlement (SPEC §7): pure building blocks that the ledger side assembles.

- `engine.settlement.zengin`: the Zengin 総合振込 payout file, written and parsed back.
- `engine.settlement.signing`: Ed25519 signatures over canonical JSON, for
  merchant statements and the signed daily chain heads of SPEC §5.

Like the rest of the core, nothing here touches the database, the web layer
or the clock: plain values in, plain values (and bytes) out.
"""
