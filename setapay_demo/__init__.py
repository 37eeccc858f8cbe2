"""The demo's HTTP driver, kept out of the server package `api`.

`setapay demo` rates a synthetic ward day with the domain core (`engine/demo.py`),
then `setapay_demo.ledger` posts part of that day through the HTTP API as the
ward's terminals and payment app would, into an embedded ledger. The API never
imports this package; the CLI imports it lazily, only for `setapay demo`.
"""
