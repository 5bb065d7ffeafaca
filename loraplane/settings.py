"""Settings both services share, read from `LORAPLANE_*` environment variables.

Each service extends `CommonSettings` with its own fields (trainer_svc.settings,
serving_svc.settings). Settings are read once at the entry point and passed down; nothing
reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("~/.local/share/loraplane").expanduser()
DEFAULT_BASE_MODEL_NAME = "smollm2-135m-instruct"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAPLANE_", extra="ignore")

    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Root of local state: store, models, caches, job DB.")
    store_uri: str = Field(
        "", description="Adapter store: file:///path or s3://bucket/prefix. Default: file://{data_dir}/store."
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint for s3:// stores (Ceph, MinIO); unset = AWS or AWS_ENDPOINT_URL."
    )
    base_model: Path = Field(
        Path(""), description="Hugging Face folder of the base model. Default: {data_dir}/models/{base_model_name}."
    )
    base_model_name: str = Field(DEFAULT_BASE_MODEL_NAME, description="Name clients use for the base model.")
    log_level: str = Field("INFO", description="Python logging level.")

    auth: Literal["tokens", "off"] = Field(
        "tokens",
        description="tokens: every call but health (and reflection, unless closed) needs a bearer token with "
        "its role; off: anyone who reaches a port may call anything (a warning is logged at start).",
    )
    auth_tokens_file: Path = Field(
        Path(""),
        description="The tokens (names, SHA-256 hashes, roles) as JSON, reread when it changes; `loraplane token "
        "add` writes it. Default: {data_dir}/tokens.json.",
    )
    auth_reflection_open: bool = Field(
        True, description="gRPC reflection answers callers without a token; false = any valid token is needed."
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate (chain) for the gRPC, HTTP and metrics ports; unset = plain text."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA certificates; set = mutual TLS: every caller must present a certificate they signed."
    )
    max_message_bytes: int = Field(
        64 << 20,
        ge=1024,
        description="Largest gRPC message (and HTTP request body) accepted; larger ones get RESOURCE_EXHAUSTED (413).",
    )

    @model_validator(mode="after")
    def _fill_derived_paths(self) -> CommonSettings:
        self.data_dir = self.data_dir.expanduser()
        if not self.store_uri:
            self.store_uri = (self.data_dir / "store").resolve().as_uri()
        if self.base_model == Path(""):
            self.base_model = self.data_dir / "models" / self.base_model_name
        self.base_model = self.base_model.expanduser()
        if self.auth_tokens_file == Path(""):
            self.auth_tokens_file = self.data_dir / "tokens.json"
        self.auth_tokens_file = self.auth_tokens_file.expanduser()
        return self
