from __future__ import annotations

from app.auth.keys import KeyIdentity, KeyStore, digest, generate_key
from app.config import ApiKey, AuthSettings


def test_keys_match_by_digest_and_name() -> None:
    settings = AuthSettings(
        keys=[ApiKey(name="team-a", sha256=digest("sk-aaa")), ApiKey(name="dev", key="sk-dev")]
    )
    store = KeyStore.from_settings(settings)
    assert store.match("sk-aaa") == KeyIdentity("team-a")
    assert store.match("sk-dev") == KeyIdentity("dev")
    assert store.match("sk-aab") is None
    assert store.match("") is None


def test_generated_keys_are_openai_shaped_and_unique() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("sk-") and len(k) >= 40 for k in keys)
