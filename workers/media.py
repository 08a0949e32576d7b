"""Turn an image_url / video_url into bytes, refusing a file over `max_media_bytes` as its bytes arrive (the one
place that limit is checked): data: URLs always; http(s) only when the server allows remote media,
and then never towards private, loopback, link-local, multicast or reserved addresses (checked after DNS
resolution, and again for every redirect hop), with a size cap enforced while streaming.

Known limit: the address is checked and then httpx resolves the name again to connect, so a DNS server that
answers differently within that window (DNS rebinding) is not stopped here; keep remote media off (the default)
unless the worker's network is itself restricted.
"""

from __future__ import annotations

import asyncio
import binascii
import ipaddress
import socket
import urllib.parse

import httpx
import pybase64

from common.errors import ErrorCode, ServingError, excerpt
from workers.limits import MediaLimits, mb

_MAX_REDIRECTS = 3
REMOTE_TIMEOUT_S = 10.0  # one remote image or video download


async def fetch_media(url: str, limits: MediaLimits, label: str, client: httpx.AsyncClient | None = None) -> bytes:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        # In a thread: splitting and decoding a 20 MB payload still costs milliseconds the event loop need not wait.
        return await asyncio.to_thread(decode_data_url, url, limits, label)
    if scheme in ("http", "https"):
        if not limits.allow_remote_media:
            raise ServingError(ErrorCode.REMOTE_URL_FORBIDDEN,
                               f"{label}: remote {scheme} URLs are disabled on this server; send the file inline as "
                               "a base64 data: URL")
        if client is not None:
            return await _fetch_remote(client, url, limits, label)
        async with httpx.AsyncClient(timeout=REMOTE_TIMEOUT_S, follow_redirects=False) as own:
            return await _fetch_remote(own, url, limits, label)
    shown = scheme or url[:16]
    raise ServingError(ErrorCode.INVALID_REQUEST, f"{label}: unsupported URL scheme {shown!r}; use a data: URL "
                       "(data:image/png;base64,...)")


def decode_data_url(url: str, limits: MediaLimits, label: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise ServingError(ErrorCode.INVALID_REQUEST, f"{label}: malformed data: URL (no comma before the data)")
    if header.lower().endswith(";base64"):
        # base64 grows data by 4/3: refuse before decoding a huge payload.
        if len(payload) * 3 // 4 > limits.max_media_bytes + 3:
            raise _too_large(label, len(payload) * 3 // 4, limits)
        try:
            data = _b64decode(payload)
        except (binascii.Error, ValueError) as exc:
            raise ServingError(ErrorCode.INVALID_REQUEST, f"{label}: the data: URL is not valid base64") from exc
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > limits.max_media_bytes:
        raise _too_large(label, len(data), limits)
    return data


def _b64decode(payload: str) -> bytes:
    """Strict base64 in one SIMD pass (milliseconds for 20 MB, where the standard library holds the GIL for a third
    of a second); a payload wrapped with line breaks or spaces (some encoders wrap lines) decodes on a second pass
    without them."""
    try:
        return pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        stripped = "".join(payload.split())
        if stripped == payload:
            raise
        return pybase64.b64decode(stripped, validate=True)


def _too_large(label: str, size: int, limits: MediaLimits) -> ServingError:
    """One file over the per-file limit (the whole conversation over the body limit is REQUEST_TOO_LARGE)."""
    return ServingError(ErrorCode.UPLOAD_TOO_LARGE, f"{label} is {mb(size)}; this server takes files of up to "
                        f"{mb(limits.max_media_bytes)} each")


async def check_public_host(host: str, port: int, label: str) -> None:
    """Resolve `host` and refuse when any address it resolves to is not a public unicast address."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ServingError(ErrorCode.INVALID_REQUEST, f"{label}: cannot resolve host {excerpt(host)}") from exc
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        if (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_reserved
                or addr.is_unspecified or not addr.is_global):
            raise ServingError(ErrorCode.REMOTE_URL_FORBIDDEN,
                               f"{label}: {host} resolves to {addr}, a private/loopback/link-local/multicast "
                               "address; only public addresses may be fetched")


async def _fetch_remote(client: httpx.AsyncClient, url: str, limits: MediaLimits, label: str) -> bytes:
    for _ in range(_MAX_REDIRECTS + 1):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ServingError(ErrorCode.REMOTE_URL_FORBIDDEN, f"{label}: {url[:80]!r} is not an http(s) URL")
        await check_public_host(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80), label)
        try:
            async with client.stream("GET", url, timeout=REMOTE_TIMEOUT_S) as resp:
                if resp.is_redirect and "location" in resp.headers:
                    url = urllib.parse.urljoin(url, resp.headers["location"])
                    continue
                if resp.status_code != 200:
                    raise ServingError(ErrorCode.INVALID_REQUEST,
                                       f"{label}: fetching {parsed.hostname} answered HTTP {resp.status_code}")
                declared = int(resp.headers.get("content-length") or 0)
                if declared > limits.max_media_bytes:
                    raise _too_large(label, declared, limits)
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > limits.max_media_bytes:
                        raise _too_large(label, size, limits)
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.HTTPError as exc:
            raise ServingError(ErrorCode.INVALID_REQUEST,
                               f"{label}: could not fetch {parsed.hostname}: {type(exc).__name__}") from exc
    raise ServingError(ErrorCode.INVALID_REQUEST, f"{label}: more than {_MAX_REDIRECTS} redirects")
