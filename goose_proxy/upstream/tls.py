"""The client ``SSLContext``: the host's RHSM certificate, reloaded when it changes.

RHSM renews ``/etc/pki/consumer/{cert,key}.pem`` in place. Building an
``SSLContext`` is expensive (loading the system trust store costs tens of
milliseconds of CPU), so one context is built and reused until the files'
``(mtime, ctime, size, inode)`` change; then the next request builds a new one. The
files are looked at (two ``stat`` calls) at most once per
:data:`RECHECK_INTERVAL`, not on every request.

A renewal that rewrites the files in place leaves a moment where the key is
new and the certificate old, or a file is cut short. When a pair that was
loaded before turns unloadable, the previous context stays in use for up to
:data:`RENEWAL_GRACE` seconds (one WARNING) while the files are looked at
again each :data:`RECHECK_INTERVAL`; only then do requests fail with the
reason. A failed build is repeated when the files change, or once per
:data:`RECHECK_INTERVAL` (each build loads the trust store again: tens of
milliseconds), so a broken pair does not cost that on every request.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import logging
import os
import ssl
import stat
import time
from typing import Any, Optional

from goose_proxy.config import AuthConfig
from goose_proxy.errors import (
    HOST_LIMITS,
    CredentialsError,
    HostLimitReached,
    ProxyError,
    ServiceUnavailable,
)

log = logging.getLogger("goose_proxy.upstream")

REGISTER_HINT = (
    "register this system with 'subscription-manager register' so that RHSM "
    "creates its client certificate"
)
PERMISSION_HINT = (
    "goose-proxy must run as the files' owner (root, as its systemd unit does) "
    "or be given read access"
)


#: where RHSM writes this host's identity: a file missing there means that the
#: host is not registered
RHSM_DIR = "/etc/pki/consumer"


def in_rhsm_dir(path: str) -> bool:
    """``path`` is a file of RHSM's (see :data:`RHSM_DIR`)."""
    return os.path.dirname(os.path.abspath(path)) == RHSM_DIR


def _label(auth: AuthConfig, path: Optional[str]) -> str:
    return "client key" if path == auth.key_file != auth.cert_file else "client certificate"


def _shown(path: str) -> str:
    """``path``, and for a relative one the directory it is relative to: the
    daemon's working directory is seldom the one the configuration is in. An
    empty one is said so, and a ``~`` is not a shell's: it is not expanded."""
    if not path:
        return '"" (no file named)'
    if os.path.isabs(path):
        return path
    tilde = "; ~ is not expanded: give the full path" if path.startswith("~") else ""
    try:
        return f"{path} (relative to the working directory {os.getcwd()}{tilde})"
    except OSError:  # the working directory was removed
        return f"{path} (relative to the working directory{tilde})"


def _hint(auth: AuthConfig, *paths: str) -> str:
    """What to do about unusable ``paths``: register the host when they are
    RHSM's, else check the keys that name them."""
    if all(in_rhsm_dir(p) for p in paths):
        return REGISTER_HINT
    keys = [
        key
        for key, value in (("cert_file", auth.cert_file), ("key_file", auth.key_file))
        if value in paths
    ]
    return f"check [backend.auth] {' and '.join(keys) or 'cert_file and key_file'}"


def _file_error(auth: AuthConfig, path: str, err: OSError) -> CredentialsError:
    """The error for the certificate or key file ``path`` that ``err`` stopped."""
    what = _label(auth, path)
    if isinstance(err, FileNotFoundError):
        return CredentialsError(f"{what} file {_shown(path)} does not exist: {_hint(auth, path)}")
    if isinstance(err, PermissionError):
        return CredentialsError(
            f"cannot read {what} {_shown(path)} (permission denied): {PERMISSION_HINT}"
        )
    return CredentialsError(f"cannot read {what} {_shown(path)}: {err.strerror or err}")


def _host_limit(e: BaseException) -> Optional[ServiceUnavailable]:
    """A retryable 503 when ``e`` is a host limit (see ``errors.HOST_LIMITS``),
    not a fault of the files (a CredentialsError says "do not retry")."""
    if isinstance(e, OSError) and not isinstance(e, ssl.SSLError) and e.errno in HOST_LIMITS:
        return HostLimitReached("load its TLS files", e)
    return None


def _regular(path: str) -> None:
    """Raise OSError unless ``path`` is a regular file (after symlinks): opening
    a FIFO would block the event loop until a writer came, for good."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)", path)


def _system_cas_loaded(ctx: ssl.SSLContext) -> None:
    """OpenSSL loads the system's CA bundle quietly: when the process is out of
    file descriptors the context has no CA at all, and a context built then
    would refuse every backend as not trusted until the files change. Load it
    again, loudly (OSError), when it holds none."""
    if ctx.cert_store_stats()["x509_ca"]:
        return
    bundle = ssl.get_default_verify_paths().cafile
    if bundle:  # (a CA directory alone is read as certificates are needed)
        try:
            ctx.load_verify_locations(cafile=bundle)
        except OSError as e:
            if _host_limit(e) is not None:
                raise
            # an unusable bundle: left as OpenSSL had it, as before


def _unreadable(auth: AuthConfig, e: OSError) -> ProxyError:
    """The error for a pair OpenSSL could not read (it names no file): look."""
    busy = _host_limit(e)
    if busy is not None:
        return busy
    for path in (auth.cert_file, auth.key_file):
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            return _host_limit(err) or _file_error(auth, path, err)
    return CredentialsError(
        f"cannot read client certificate or key ({e.strerror or e}): "
        + _hint(auth, auth.cert_file, auth.key_file)
    )


_Stamp = tuple[Optional[tuple[int, int, int, int]], ...]

#: seconds a checked certificate pair is trusted to be unchanged
RECHECK_INTERVAL = 1.0
#: seconds the last good pair is still used once the files on disk cannot be loaded
RENEWAL_GRACE = 10.0

_now = time.monotonic


def _stamp(*paths: str, ca: str = "") -> _Stamp:
    """What the files at ``paths`` are now (raises OSError for one that cannot
    be looked at), and the CA file ``ca`` (None when it cannot: the build then
    says what is wrong with it)."""
    out: list[Optional[tuple[int, int, int, int]]] = []
    for p in paths:
        st = os.stat(p)
        if not stat.S_ISREG(st.st_mode):
            _regular(p)  # raises, naming what it is
        # ctime too: a chmod or chown changes whether the file can be read
        out.append((st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
    if ca:
        try:
            st = os.stat(ca)
            out.append((st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append(None)
    return tuple(out)


class ClientTLS:
    """Owns the mTLS client context; :meth:`context` returns a current one."""

    def __init__(self, auth: AuthConfig) -> None:
        self._auth = auth
        self._ctx: Optional[ssl.SSLContext] = None
        self._stamp: Optional[_Stamp] = None
        self._checked = 0.0  # when the files last matched _stamp (time.monotonic)
        # the last failure: the files' stamp (None when stat failed), when, the error
        self._failed: Optional[tuple[Optional[_Stamp], float, CredentialsError]] = None
        self._broken_since: Optional[float] = None  # the files unusable since, with a _ctx
        #: the CA bundle, looked at with the pair: [backend.auth] ca_file, else
        #: the system's (a CA replaced there is used without a restart)
        self._ca = auth.ca_file or ssl.get_default_verify_paths().cafile or ""
        self.builds = 0  # how many contexts were built (tests and benchmarks read it)

    def context(self) -> ssl.SSLContext:
        """The context for the current cert/key pair (as of at most
        :data:`RECHECK_INTERVAL` ago).

        Raises CredentialsError when the files are missing, unreadable, not PEM,
        not regular files, or the key does not match the certificate;
        ServiceUnavailable when the host is out of file descriptors or memory
        and no pair was loaded before (else that one is used meanwhile).
        """
        now = _now()
        if self._ctx is not None and now - self._checked < RECHECK_INTERVAL:
            return self._ctx
        auth = self._auth
        try:
            stamp = _stamp(auth.cert_file, auth.key_file, ca=self._ca)
        except OSError as e:  # missing, or a directory on the way may not be searched
            return self._unusable(None, now, _file_error(auth, e.filename, e))
        if self._ctx is not None and stamp == self._stamp:
            self._checked, self._broken_since = now, None  # renewed back to the same pair
            return self._ctx
        failed = self._failed
        if failed is not None and failed[0] == stamp and now - failed[1] < RECHECK_INTERVAL:
            return self._unusable(stamp, failed[1], failed[2])  # the same files: no rebuild
        try:
            ctx = self._build()
        except CredentialsError as e:
            return self._unusable(stamp, now, e)
        except ServiceUnavailable:  # a host limit: the files are not at fault
            if self._ctx is None:
                raise
            return self._ctx  # the pair loaded before, until a build succeeds
        if self._ctx is not None and self._stamp is not None:
            if stamp[:2] != self._stamp[:2]:
                log.info("client certificate changed on disk; reloaded %s", auth.cert_file)
            else:
                log.info("CA file changed on disk; reloaded %s", self._ca)
        self._ctx, self._stamp, self._checked = ctx, stamp, now
        self._failed = self._broken_since = None
        self.builds += 1
        return ctx

    def date_problem(self) -> Optional[str]:
        """What is wrong with the dates of the configured certificate (expired, not
        yet valid), or None: said with a refusal, which the backend's TLS alert
        (or silence) does not explain. Read from the file each time: error paths only."""
        info = certificate_info(self._auth.cert_file)
        problem = validity_problem(self._auth.cert_file, info) if info is not None else None
        return problem[0] if problem is not None else None

    def _unusable(
        self, stamp: Optional[_Stamp], when: float, err: CredentialsError
    ) -> ssl.SSLContext:
        """The files cannot be loaded (``err``): the previous context while
        :data:`RENEWAL_GRACE` lasts, else raise ``err``."""
        self._failed = (stamp, when, err)
        if self._ctx is None:
            raise err
        now = _now()
        if self._broken_since is None:
            self._broken_since = now
            log.warning(
                "%s; still using the certificates loaded before for up to %g s "
                "(a renewal may be writing the files)",
                err.message,
                RENEWAL_GRACE,
            )
        if now - self._broken_since >= RENEWAL_GRACE:
            raise err
        self._checked = now  # look again after RECHECK_INTERVAL
        return self._ctx

    def _build(self) -> ssl.SSLContext:
        auth = self._auth
        try:
            if auth.ca_file:
                _regular(auth.ca_file)
                ctx = ssl.create_default_context(cafile=auth.ca_file)
            else:
                ctx = ssl.create_default_context()
                _system_cas_loaded(ctx)
        except (OSError, ssl.SSLError) as e:
            busy = _host_limit(e)
            if busy is not None:
                raise busy from None
            raise CredentialsError(
                f"cannot load the CA file {auth.ca_file} ([backend.auth] ca_file): "
                f"{getattr(e, 'strerror', None) or e}",
                code="ca_file_unavailable",  # not the client certificate's fault
            ) from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # a TLS 1.3 backend may ask for the certificate only after the handshake
        # (post-handshake authentication: Apache, for a location that requires
        # one); without this, it is never offered and the backend answers 403
        ctx.post_handshake_auth = True
        try:
            # an encrypted key: without a password callback OpenSSL would ask
            # for the passphrase on the terminal, with the event loop blocked
            ctx.load_cert_chain(auth.cert_file, auth.key_file, password=_no_passphrase)
        except _EncryptedKey:
            raise CredentialsError(
                f"the private key {auth.key_file} is encrypted (it asks for a "
                "passphrase), which goose-proxy cannot enter: give it an unencrypted "
                "key, as RHSM writes it"
            ) from None
        except ssl.SSLError as e:
            reason = getattr(e, "reason", None) or ""
            # a key of another type than the certificate's (RSA beside EC) is
            # "no certificate assigned" to the key, as OpenSSL 3 sees it
            if reason.upper() in _MISMATCH_REASONS:
                raise CredentialsError(
                    f"the private key {auth.key_file} does not match the client "
                    f"certificate {auth.cert_file}"
                ) from None
            raise CredentialsError(
                f"cannot load the client certificate {_shown(auth.cert_file)} and key "
                f"{_shown(auth.key_file)} ({reason or 'not valid PEM'}): "
                + _hint(auth, auth.cert_file, auth.key_file)
            ) from None
        except OSError as e:  # OpenSSL does not say which file: look
            raise _unreadable(auth, e) from None
        return ctx


#: OpenSSL's reasons for a private key that is not the certificate's
_MISMATCH_REASONS = frozenset(
    {"KEY_VALUES_MISMATCH", "KEY_TYPE_MISMATCH", "NO_CERTIFICATE_ASSIGNED"}
)


class _EncryptedKey(Exception):
    """The key file asked for a passphrase (raised by :func:`_no_passphrase`)."""


def _no_passphrase() -> bytes:
    raise _EncryptedKey


# --- what the certificate says about itself (goose-proxy check, and a refusal) ---


@dataclasses.dataclass(frozen=True)
class CertInfo:
    subject: str
    not_before: Optional[datetime.datetime]
    not_after: Optional[datetime.datetime]


def _cert_time(value: Any) -> Optional[datetime.datetime]:
    if not value:
        return None
    return datetime.datetime.fromtimestamp(
        ssl.cert_time_to_seconds(value), tz=datetime.timezone.utc
    )


_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
}


def certificate_info(cert_file: str) -> Optional[CertInfo]:
    """Subject and validity of the (first) certificate in ``cert_file``, or None if it
    cannot be decoded (no standard API does this; CPython's ``_ssl`` helper has for
    every supported version)."""
    try:
        _regular(cert_file)
        info = ssl._ssl._test_decode_cert(cert_file)  # type: ignore[attr-defined]
        subject = ",".join(
            f"{_SHORT_NAMES.get(k, k)}={v}" for rdn in info.get("subject", ()) for k, v in rdn
        )
        return CertInfo(
            subject, _cert_time(info.get("notBefore")), _cert_time(info.get("notAfter"))
        )
    except (AttributeError, OSError, ssl.SSLError, ValueError, TypeError):
        return None


def fmt_time(when: datetime.datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M} UTC"


def validity_problem(
    cert_file: str, info: CertInfo, now: Optional[datetime.datetime] = None
) -> Optional[tuple[str, str]]:
    """``(what is wrong, a short reason)`` when the certificate is expired or not
    yet valid at ``now`` (default: the present), else None."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if info.not_after is not None and info.not_after < now:
        return (
            f"{cert_file} expired on {fmt_time(info.not_after)}; RHSM renews it while the "
            "system is registered: check 'subscription-manager status' and the rhsmcertd "
            "service",
            "certificate expired",
        )
    if info.not_before is not None and info.not_before > now:
        return (
            f"{cert_file} is not valid before {fmt_time(info.not_before)}: is the system "
            "clock right?",
            "certificate not yet valid",
        )
    return None
