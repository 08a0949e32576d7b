"""One settings object for the web UI; CLI flags and INTERNVL_UI_* environment variables come from it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.bounded_http import HEAD_TIMEOUT_S


class UISettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INTERNVL_UI_", cli_kebab_case=True, cli_prog_name="python -m app",
                                      cli_implicit_flags=True, protected_namespaces=())

    controller_url: str = Field("http://127.0.0.1:21001", description="the controller's OpenAI-compatible API")
    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 exposes the UI to the network")
    port: int = Field(7860, ge=0, le=65535)
    api_key: str | None = Field(None, description="bearer key sent to the controller when it requires one")
    logging: bool = Field(True, description="write one JSON line per chat turn (--no-logging turns it off)")
    log_dir: Path = Field(Path("logs/conversations"), description="where conversation logs and media go")
    media_max_age_s: int = Field(24 * 3600, ge=1, description="uploads and generated files older than this are "
                                 "deleted (checked every few minutes)")
    max_upload_mb: int = Field(50, ge=1, le=2048, description="largest file a user may upload (the model's own "
                               "advertised limit applies when lower)")
    session_upload_mb: int = Field(200, ge=1, description="uploads one browser session may keep at once")
    total_upload_mb: int = Field(2048, ge=1, description="uploads all sessions together may keep at once")
    encoded_cache_mb: int = Field(256, ge=0, description="uploaded files kept base64-encoded between turns")
    share: bool = Field(False, description="ask Gradio for a public share link (off: stays on this machine)")
    request_timeout_s: float = Field(600.0, gt=0, description="longest one answer may stream")
    connect_timeout_s: float = Field(5.0, gt=0)
    default_max_tiles: int = Field(6, ge=1, le=40, description="initial 'max tiles per image' in the settings")
    default_num_frames: int = Field(8, ge=1, le=64, description="initial 'frames per video' in the settings")
    concurrency_limit: int = Field(16, ge=1, le=1024, description="chats streaming at once through this UI")
    header_timeout_s: float = Field(HEAD_TIMEOUT_S, gt=0, le=600, description="longest a client may take to send a "
                                    "request's line and headers (then 408); they may total 64 KiB (then 431)")
