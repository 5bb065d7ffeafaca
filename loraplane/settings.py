"""Settings both services share, read from `LORAPLANE_*` environment variables.

Each service extends `CommonSettings` with its own fields (trainer_svc.settings,
serving_svc.settings). Settings are read once at the entry point and passed down; nothing
reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path

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

    @model_validator(mode="after")
    def _fill_derived_paths(self) -> CommonSettings:
        self.data_dir = self.data_dir.expanduser()
        if not self.store_uri:
            self.store_uri = (self.data_dir / "store").resolve().as_uri()
        if self.base_model == Path(""):
            self.base_model = self.data_dir / "models" / self.base_model_name
        self.base_model = self.base_model.expanduser()
        return self
