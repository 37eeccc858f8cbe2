"""Webhook endpoints' rules, as plain values: which URLs are accepted, secrets, signed headers.

The URL rule (SPEC §10; no surprises for the ward's network):

- `https://` only, with a host, no user or password in the URL, at most 2,048 characters;
- the host may not be `localhost` nor an IP literal that is loopback, private, link-local,
  multicast, reserved or unspecified (so an admin key cannot make the engine call the
  database, the metadata service of a cloud or anything else inside the ward's network);
  a name that *resolves* to such an address is refused at delivery time
  (`engine/store/webhooks.py`), since DNS may change after registration, and the
  delivery connects to the very address it checked (the name kept for the Host
  header and TLS), so an answer that changes between check and connection does
  not count;
- `SETAPAY_WEBHOOKS_ALLOW_HTTP=1` lifts both (plain `http://` and local addresses) for
  development and tests; the ward leaves it unset.

Deliveries are signed per Standard Webhooks with the `standardwebhooks` package: headers
`webhook-id` (the event's, the same on every retry), `webhook-timestamp` (Unix seconds of the
attempt) and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, under the
endpoint's secret `whsec_<base64 of 32 random bytes>`.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import secrets
from urllib.parse import urlsplit

from standardwebhooks.webhooks import Webhook

URL_CHARS_MAX = 2048
SECRET_BYTES = 32
SECRET_PREFIX = "whsec_"


def url_problem(url: str, allow_http: bool) -> str | None:
    """Why `url` may not be a webhook endpoint, or None when it may (the rule above)."""
    if len(url) > URL_CHARS_MAX:
        return f"the URL is longer than {URL_CHARS_MAX} characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # a malformed port raises here
    except ValueError:
        return "the URL is not valid"
    if parts.scheme not in (("https", "http") if allow_http else ("https",)):
        return "a webhook URL is https:// (plain http:// only with SETAPAY_WEBHOOKS_ALLOW_HTTP=1)"
    host = parts.hostname
    if not host or parts.username is not None or parts.password is not None or parts.fragment:
        return "a webhook URL has a host and no user, password or fragment"
    if not host.isascii():
        # Unicode folding (IDNA 2003 maps "ⓛocalhost" to "localhost") is not ours to guess:
        # an internationalized name is given in its xn-- form.
        return "a webhook URL's host is ASCII (an internationalized name in its xn-- form)"
    if port == 0 or any(c.isspace() for c in url):
        return "the URL is not valid"
    last_label = host.rstrip(".").rsplit(".", 1)[-1].lower()
    if ":" not in host and (last_label.isdigit() or last_label.startswith("0x")) and not _is_address(host):
        # No top-level domain is numeric: `2130706433`, `0x7f.1` or `0177.0.0.1` are IPv4 addresses
        # in forms resolvers read differently, never names.
        return "a webhook URL's host is a name or an IP address in its standard form"
    if not allow_http and address_is_local(host):
        return "a webhook URL may not name a local, private or reserved address"
    return None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def address_is_local(host: str) -> bool:
    """Whether `host` is `localhost` or an IP address inside a host or a private network."""
    if host.lower().rstrip(".") in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # a name: checked again, resolved, at delivery
    if _not_routable(address) or address in _LOCAL_NAT64:
        return True
    embedded = _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
    return embedded is not None and _not_routable(embedded)


def _not_routable(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not address.is_global or address.is_multicast or address in _IETF_PROTOCOL


# RFC 6890's IETF protocol assignments are not globally reachable as a block; Python 3.11 calls
# some of them global (192.0.0.8, RFC 7600's dummy address, helper-91). None is a webhook's.
_IETF_PROTOCOL = ipaddress.IPv4Network("192.0.0.0/24")


# RFC 8215's local-use NAT64 prefix is not globally reachable (Python 3.11 calls it global); its
# IPv4 address may sit at several places (RFC 6052), so the whole prefix is refused.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")
# IPv6 forms whose last 32 bits are an IPv4 address routing may reach: the old IPv4-compatible
# form, IPv4-translated (RFC 2765) and the well-known NAT64 prefix (RFC 6052).
_LAST_32_BITS = (
    ipaddress.IPv6Network("::/96"),
    ipaddress.IPv6Network("::ffff:0:0:0/96"),
    ipaddress.IPv6Network("64:ff9b::/96"),
)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, IPv4-compatible or -translated,
    NAT64's well-known prefix), which routing may reach: checked like the address itself.
    (Teredo's 2001::/32 is not global to begin with.)"""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in network for network in _LAST_32_BITS):
        return ipaddress.IPv4Address(address.packed[-4:])
    return None


def new_secret() -> str:
    """A signing secret as Standard Webhooks spells it: `whsec_` and base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signed_headers(secret: str, message_id: str, at_us: int, body: str) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt to send `body` as message `message_id`."""
    at = dt.datetime.fromtimestamp(at_us // 1_000_000, tz=dt.UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(at_us // 1_000_000),
        "webhook-signature": Webhook(secret).sign(message_id, at, body),
        "content-type": "application/json",
    }
