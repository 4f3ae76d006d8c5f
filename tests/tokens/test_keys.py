"""The key ring: loading, key-type checks, the JWKS document and when a new key starts signing."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from service.logs import configure_logging
from service.tokens.access import issue_access_token
from service.tokens.keys import (
    KEY_TIME_FORMAT,
    InvalidSigningKey,
    KeyRing,
    MissingSigningKey,
    generate_key,
    key_time,
    load_key,
)

# The default of GATEHOUSE_KEY_PUBLISH_SECONDS.
PUBLISH_SECONDS = 300


@pytest.fixture(autouse=True)
def json_logs():
    # The ring logs through the service's JSON format, whether or not a test created an app before.
    configure_logging("info")


def log_events(text: str, event: str) -> list[dict]:
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [record for record in records if record.get("event") == event]


def key_made_at(directory: Path, made_at: datetime) -> Path:
    """Generate a key and rename it as `gatehouse keys generate` would have named it at `made_at`."""
    path = generate_key(directory, "EdDSA")
    return path.rename(directory / f"{made_at.strftime(KEY_TIME_FORMAT)}-eddsa.pem")


def kids(ring: KeyRing) -> list[str]:
    return [jwk["kid"] for jwk in ring.jwks()["keys"]]


def test_empty_directory_raises_missing_key(tmp_path):
    with pytest.raises(MissingSigningKey, match="gatehouse keys generate"):
        KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS)


def test_key_of_wrong_type_rejected(tmp_path):
    generate_key(tmp_path, "EdDSA")
    with pytest.raises(InvalidSigningKey, match="ES256"):
        KeyRing.load(tmp_path, "ES256", publish_seconds=PUBLISH_SECONDS)


def test_short_rsa_key_rejected(tmp_path):
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "weak.pem").write_bytes(weak.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(InvalidSigningKey):
        KeyRing.load(tmp_path, "RS256", publish_seconds=PUBLISH_SECONDS)


def test_garbage_file_rejected(tmp_path):
    (tmp_path / "broken.pem").write_text("not a key")
    with pytest.raises(InvalidSigningKey, match="broken.pem"):
        KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS)


@pytest.mark.parametrize("name, content", [("20261399T250000Z-bad.pem", None), ("30000101T000000Z-junk.pem", "junk")])
def test_lenient_load_skips_invalid_file(tmp_path, capsys, name, content):
    good = generate_key(tmp_path, "EdDSA")
    bad = tmp_path / name
    if content is None:
        bad.write_bytes(good.read_bytes())
    else:
        bad.write_text(content)

    ring = KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS, skip_invalid=True)

    assert ring.signing_key.path == good
    assert kids(ring) == [ring.signing_key.kid]
    [skipped] = log_events(capsys.readouterr().out, "signing_key_skipped")
    assert skipped["level"] == "error"
    assert skipped["path"] == str(bad)
    with pytest.raises(InvalidSigningKey, match=name):
        KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS)


def test_fifo_named_like_key_rejected_without_blocking(tmp_path):
    # Reading a FIFO would wait for a writer forever, and with it a worker's start or a reload check.
    os.mkfifo(tmp_path / "20260101T000000Z-pipe.pem")
    good = generate_key(tmp_path, "EdDSA")

    ring = KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS, skip_invalid=True)

    assert ring.signing_key.path == good
    with pytest.raises(InvalidSigningKey, match="not a regular file"):
        KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS)


def test_lenient_load_without_valid_key_raises(tmp_path):
    (tmp_path / "broken.pem").write_text("not a key")

    with pytest.raises(InvalidSigningKey, match="broken.pem"):
        KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS, skip_invalid=True)


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "RS256"])
def test_jwks_publishes_public_parts_only(tmp_path, algorithm):
    path = generate_key(tmp_path, algorithm)
    ring = KeyRing.load(tmp_path, algorithm, publish_seconds=PUBLISH_SECONDS)
    [jwk] = ring.jwks()["keys"]
    assert jwk["kid"] == ring.signing_key.kid
    assert jwk["alg"] == algorithm
    assert jwk["use"] == "sig"
    assert "d" not in jwk
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_newest_published_key_signs(tmp_path):
    key_made_at(tmp_path, datetime.now(UTC) - timedelta(days=2))
    newest = key_made_at(tmp_path, datetime.now(UTC) - timedelta(days=1))

    assert KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS).signing_key.path == newest


def test_fresh_second_key_published_but_not_signing(tmp_path):
    old = key_made_at(tmp_path, datetime.now(UTC) - timedelta(days=1))
    new = generate_key(tmp_path, "EdDSA")

    ring = KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS)

    new_kid = load_key(new, "EdDSA").kid
    assert new_kid in kids(ring)
    assert len(kids(ring)) == 2
    assert ring.signing_key.path == old
    assert ring.verification_key(new_kid) is not None


def test_second_key_signs_after_publish_period(tmp_path):
    old = key_made_at(tmp_path, datetime.now(UTC) - timedelta(days=1))
    new = generate_key(tmp_path, "EdDSA")
    ring = KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS)
    signs_from = key_time(new) + PUBLISH_SECONDS

    assert ring.signing_key_at(signs_from - 0.001).path == old
    assert ring.signing_key_at(signs_from).path == new
    assert ring.signing_key_at(signs_from + 86_400).path == new


def test_key_switch_without_reload(tmp_path, settings, capsys):
    """The ring loaded before the new key's publish period ended signs with it afterwards."""
    old = key_made_at(tmp_path, datetime.now(UTC) - timedelta(days=1))
    new = generate_key(tmp_path, "EdDSA")
    publish_seconds = 1
    ring = KeyRing.load(tmp_path, "EdDSA", publish_seconds=publish_seconds)
    old_kid = ring.signing_key.kid
    assert ring.signing_key.path == old

    time.sleep(max(0.0, key_time(new) + publish_seconds - time.time()) + 0.05)
    token = issue_access_token(ring, settings, "a" * 32, "b" * 32)

    assert ring.signing_key.path == new
    assert jwt.get_unverified_header(token)["kid"] == ring.signing_key.kid
    switched = log_events(capsys.readouterr().out, "signing_key_switched")
    assert [(entry["previous_kid"], entry["kid"]) for entry in switched] == [(old_kid, ring.signing_key.kid)]
    assert switched[0]["level"] == "info"


def test_single_fresh_key_signs(tmp_path):
    only = generate_key(tmp_path, "EdDSA")

    ring = KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS)

    assert ring.signing_key.path == only


def test_publish_seconds_zero_signs_at_once(tmp_path):
    key_made_at(tmp_path, datetime.now(UTC) - timedelta(days=1))
    new = generate_key(tmp_path, "EdDSA")

    ring = KeyRing.load(tmp_path, "EdDSA", publish_seconds=0)

    assert ring.signing_key.path == new


def test_unpublished_keys_sign_in_publish_order(tmp_path):
    """With no key past its publish period, the first to reach it signs, and signing never moves back."""
    now = datetime.now(UTC)
    first = key_made_at(tmp_path, now - timedelta(seconds=100))
    second = key_made_at(tmp_path, now - timedelta(seconds=10))
    ring = KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS)
    first_from = key_time(first) + PUBLISH_SECONDS
    second_from = key_time(second) + PUBLISH_SECONDS

    assert ring.signing_key.path == first
    assert ring.signing_key_at(first_from).path == first
    assert ring.signing_key_at(second_from - 0.001).path == first
    assert ring.signing_key_at(second_from).path == second


def test_file_mtime_does_not_count(tmp_path):
    """A Secret volume rewrites its files in each pod, so only the time in the name counts."""
    key_made_at(tmp_path, datetime.now(UTC) - timedelta(days=1))
    new = generate_key(tmp_path, "EdDSA")
    a_day_ago = time.time() - 86_400
    os.utime(new, (a_day_ago, a_day_ago))

    ring = KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS)

    assert ring.signing_key.path != new


def test_undated_key_signs_at_once_with_warning(tmp_path, capsys):
    key_made_at(tmp_path, datetime.now(UTC) - timedelta(days=1))
    undated = generate_key(tmp_path, "EdDSA").rename(tmp_path / "zz-signing.pem")

    ring = KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS)

    assert ring.signing_key.path == undated
    warnings = log_events(capsys.readouterr().out, "signing_key_undated")
    assert [entry["path"] for entry in warnings] == [str(undated)]
    assert warnings[0]["level"] == "warning"


def test_undated_key_without_warning_at_zero(tmp_path, capsys):
    generate_key(tmp_path, "EdDSA").rename(tmp_path / "signing.pem")

    KeyRing.load(tmp_path, "EdDSA", publish_seconds=0)

    assert log_events(capsys.readouterr().out, "signing_key_undated") == []


def test_load_logs_pending_key(tmp_path, capsys):
    old = key_made_at(tmp_path, datetime.now(UTC) - timedelta(days=1))
    new = key_made_at(tmp_path, datetime(2030, 1, 2, 3, 4, 5, 600_000, tzinfo=UTC))

    ring = KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS)

    [loaded] = log_events(capsys.readouterr().out, "signing_keys_loaded")
    new_kid = kids(ring)[1]
    assert loaded["signing_kid"] == ring.signing_key.kid
    assert ring.signing_key.path == old
    assert loaded["kids"] == kids(ring)
    assert loaded["signing_early"] is False
    assert loaded["pending"] == {new_kid: "2030-01-02T03:09:05.600000Z"}
    assert new.name.startswith("20300102T030405600000Z")


def test_first_key_logged_as_signing_early(tmp_path, capsys):
    generate_key(tmp_path, "EdDSA")

    ring = KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS)

    # The only key signs before its publish period has ended, and it is not also pending.
    [loaded] = log_events(capsys.readouterr().out, "signing_keys_loaded")
    assert loaded["signing_kid"] == ring.signing_key.kid
    assert loaded["signing_early"] is True
    assert loaded["pending"] == {}


def test_early_signing_key_not_pending(tmp_path, capsys):
    now = datetime.now(UTC)
    key_made_at(tmp_path, now - timedelta(seconds=60))
    key_made_at(tmp_path, now)

    ring = KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS)

    # Neither key has finished its publish period, so the older one signs and the newer one waits.
    [loaded] = log_events(capsys.readouterr().out, "signing_keys_loaded")
    older_kid, newer_kid = kids(ring)
    assert loaded["signing_kid"] == older_kid
    assert loaded["signing_early"] is True
    assert list(loaded["pending"]) == [newer_kid]


def test_signing_never_early_at_zero(tmp_path, capsys):
    generate_key(tmp_path, "EdDSA")

    KeyRing.load(tmp_path, "EdDSA", publish_seconds=0)

    [loaded] = log_events(capsys.readouterr().out, "signing_keys_loaded")
    assert loaded["signing_early"] is False
    assert loaded["pending"] == {}


@pytest.mark.parametrize(("name", "expected"), [
    ("20250131T120000123456Z-eddsa.pem", datetime(2025, 1, 31, 12, 0, 0, 123456, tzinfo=UTC)),
    ("20250131T120000Z-eddsa.pem", datetime(2025, 1, 31, 12, 0, 0, tzinfo=UTC)),
    ("20250131T120000Z.pem", datetime(2025, 1, 31, 12, 0, 0, tzinfo=UTC)),
])
def test_key_time_read_from_name(name, expected):
    assert key_time(Path(name)) == expected.timestamp()


@pytest.mark.parametrize("name", ["signing.pem", "key-1.pem", "2025-01-31-eddsa.pem", "20250131T1200-eddsa.pem"])
def test_name_without_time_is_undated(name):
    assert key_time(Path(name)) is None


@pytest.mark.parametrize("name", ["20251331T120000Z-eddsa.pem", "20250131T250000Z-eddsa.pem"])
def test_invalid_time_in_name_rejected(tmp_path, name):
    generate_key(tmp_path, "EdDSA").rename(tmp_path / name)

    with pytest.raises(InvalidSigningKey, match=name):
        KeyRing.load(tmp_path, "EdDSA", publish_seconds=PUBLISH_SECONDS)


def test_generated_name_records_creation_time(tmp_path):
    before = time.time()
    path = generate_key(tmp_path, "EdDSA")
    after = time.time()

    assert before - 0.001 <= key_time(path) <= after + 0.001
