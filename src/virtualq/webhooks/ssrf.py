"""Refuse webhook targets on private, loopback and other internal addresses (unless configured)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit


class TargetRefused(ValueError):
    pass


def _internal(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def check_url_shape(url: str) -> str:
    """The host of an http(s) URL without credentials; TargetRefused otherwise."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host
        raise TargetRefused("url is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("url must be http:// or https://")
    if not parts.hostname:
        raise TargetRefused("url has no host")
    if parts.username or parts.password:
        raise TargetRefused("url may not carry credentials")
    try:
        port = parts.port
    except ValueError:
        raise TargetRefused("url has an invalid port") from None
    if port == 0:
        raise TargetRefused("url has an invalid port")
    if any(char.isspace() or not char.isprintable() for char in url):
        raise TargetRefused("url may not contain spaces or control characters")
    host = parts.hostname
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:  # a name: each label 1 to 63 characters, as DNS (and the IDNA codec) requires
        try:
            host.encode("idna")
        except UnicodeError:
            raise TargetRefused(f"url has an invalid host name ({host[:100]})") from None
    return host


async def check_target(url: str, allow_private: bool) -> None:
    """Resolve the URL's host; refuse when any address is internal and that is not allowed."""
    host = check_url_shape(url)
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise TargetRefused(f"cannot resolve {host}") from None
    for info in infos:
        address = str(info[4][0])
        if _internal(address):
            raise TargetRefused(
                f"{host} resolves to a private or loopback address ({address}); the server refuses such"
                " targets unless its operator sets WEBHOOK_ALLOW_PRIVATE_TARGETS=true (local testing)"
            )
