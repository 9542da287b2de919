"""Second-factor codes (a PIN, a card number): stored only as salted scrypt hashes.

`hash_code` makes the string kept in a person's `person.yaml`
(`scrypt$<n>$<r>$<p>$<salt>$<hash>`, base64); `check_code` compares in
constant time. The code itself is never stored or logged. scrypt's cost
(n=2**14, r=8: about 16 MB and tens of milliseconds) makes guessing a stolen
file's 6-digit PINs slow; guessing at the door is stopped sooner, by the
door's rate limit (accessd/secondfactor.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

MIN_CODE_CHARS = 4
MAX_CODE_CHARS = 64
_N, _R, _P = 2**14, 8, 1


class CodeError(ValueError):
    """A code that cannot be used (too short, too long, not printable)."""


def check_format(code: str) -> str:
    if not isinstance(code, str) or not code.isprintable() or code != code.strip():
        raise CodeError("code: must be printable characters, no surrounding spaces")
    if not MIN_CODE_CHARS <= len(code) <= MAX_CODE_CHARS:
        raise CodeError(f"code: must be {MIN_CODE_CHARS} to {MAX_CODE_CHARS} characters (got {len(code)})")
    return code


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_code(code: str) -> str:
    check_format(code)
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(code.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def valid_hash(stored: str) -> bool:
    """Whether `stored` is a hash this module can check (a person.yaml's `code_hash`)."""
    try:
        _parse(stored)
    except ValueError:
        return False
    return True


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    kind, n, r, p, salt, digest = stored.split("$")
    if kind != "scrypt":
        raise ValueError("not an scrypt hash")
    values = int(n), int(r), int(p)
    if not (2 <= values[0] <= 2**20 and values[0] & (values[0] - 1) == 0 and 1 <= values[1] <= 32
            and 1 <= values[2] <= 16):
        raise ValueError("scrypt parameters out of range")
    return (*values, base64.b64decode(salt, validate=True), base64.b64decode(digest, validate=True))


def check_code(code: str, stored: str) -> bool:
    """Whether `code` is the one hashed in `stored`; False for a malformed hash (never raises)."""
    try:
        n, r, p, salt, digest = _parse(stored)
    except ValueError:
        return False
    given = hashlib.scrypt(code.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=len(digest))
    return hmac.compare_digest(given, digest)
