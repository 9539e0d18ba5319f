"""Signed action entries, like Nix's binary-cache signatures.

An object is checked by its digest wherever it comes from; an action entry (key -> manifest) is
what a writer to a shared cache could poison, so it can carry ed25519 signatures over its
canonical bytes, and a reader with trusted keys takes only entries one of them signed.

Keys: the signing key is a PEM private key file ($MLCBUILD_SIGNING_KEY or --signing-key), e.g.
`openssl genpkey -algorithm ed25519 -out ci.pem`. Trusted keys ($MLCBUILD_TRUSTED_KEYS) are a
comma- or space-separated list of PEM public key files (`openssl pkey -in ci.pem -pubout`) or
inline `ed25519:<base64 of the 32 raw bytes>` items.
"""
from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

from mlcbuild.errors import UserError
from mlcbuild.store.entries import MAX_ENTRY_BYTES
from mlcbuild.store.manifest import canonical_json, parse_json

FORMAT = "mlcbuild-ac/1"
ENV_SIGNING_KEY = "MLCBUILD_SIGNING_KEY"
ENV_TRUSTED_KEYS = "MLCBUILD_TRUSTED_KEYS"


def _raw_public(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Any) -> str:
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


def public_key_text(public_key: Any) -> str:
    """The inline form a reader puts in MLCBUILD_TRUSTED_KEYS."""
    return "ed25519:" + base64.b64encode(_raw_public(public_key)).decode()


def load_signing_key(path: Path, origin: str) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"cannot read an ed25519 PEM private key from {path}: {type(e).__name__}", field=origin) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"{path} is not an ed25519 key", field=origin)
    return key


def load_trusted_keys(spec: str, origin: str = ENV_TRUSTED_KEYS) -> dict[str, Any]:
    """key id -> public key, from a list of PEM files and inline `ed25519:<base64>` keys."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    keys: dict[str, Any] = {}
    for item in re.split(r"[,\s]+", spec.strip()):
        if not item:
            continue
        try:
            if item.startswith("ed25519:"):
                key = Ed25519PublicKey.from_public_bytes(base64.b64decode(item[len("ed25519:"):], validate=True))
            else:
                key = serialization.load_pem_public_key(Path(item).read_bytes())
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"cannot read trusted key {item!r}: {type(e).__name__}", field=origin) from None
        if not isinstance(key, Ed25519PublicKey):
            raise UserError(f"trusted key {item!r} is not an ed25519 key", field=origin)
        keys[key_id(key)] = key
    if not keys:
        raise UserError(
            "is set but names no key (unset it to accept unsigned entries; an empty value never turns checking off)",
            field=origin,
        )
    return keys


def _message(entry: dict[str, Any]) -> bytes:
    return FORMAT.encode() + b"\n" + canonical_json(entry)


def seal(entry: dict[str, Any], signing_key: Any | None) -> bytes:
    """The bytes stored at ac/<key>: the entry and, with a key, its signature."""
    signatures = []
    if signing_key is not None:
        signature = signing_key.sign(_message(entry))
        signatures.append({"keyid": key_id(signing_key.public_key()), "sig": base64.b64encode(signature).decode()})
    return canonical_json({"format": FORMAT, "entry": entry, "signatures": signatures})


def unseal(data: bytes, trusted: dict[str, Any] | None) -> dict[str, Any]:
    """The entry in `data`; ValueError saying why when it is malformed (larger than MAX_ENTRY_BYTES,
    nested deeper than MAX_JSON_DEPTH included) or no trusted key signed it."""
    envelope = parse_json(data, MAX_ENTRY_BYTES)
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT or not isinstance(envelope.get("entry"), dict):
        raise ValueError(f"not an {FORMAT} entry")
    entry = envelope["entry"]
    if trusted is None:
        return entry
    signatures = envelope.get("signatures") or []
    if not isinstance(signatures, list) or not all(isinstance(s, dict) for s in signatures):
        raise ValueError("its signatures are not a list of objects")
    if not signatures:
        raise ValueError("unsigned, and trusted keys are configured")
    from cryptography.exceptions import InvalidSignature

    for signature in signatures:
        key = trusted.get(str(signature.get("keyid")))
        if key is None:
            continue
        try:
            key.verify(base64.b64decode(signature.get("sig", "")), _message(entry))
            return entry
        except (InvalidSignature, ValueError):
            raise ValueError(f"bad signature by trusted key {signature.get('keyid')}") from None
    raise ValueError("signed by no trusted key (key ids: " + ", ".join(repr(str(s.get("keyid"))[:32]) for s in signatures[:4]) + ")")
