"""One settings object for the launcher; its flags (launcher/cli.py) and INTERNVL_* environment variables come
from it. Secrets travel to the processes it starts in environment variables, never on their command lines."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "INTERNVL_"
_SECRET = re.compile(r"^[A-Za-z0-9._~+/=-]+$")


def _auto_or_positive(value: str, flag: str) -> str:
    value = str(value).strip()
    if value != "auto" and not (value.isdigit() and int(value) >= 1):
        raise ValueError(f"{flag} takes a positive number or 'auto', not {value!r}")
    return value


class LaunchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, protected_namespaces=(), validate_default=True)

    # model and GPUs
    model: str | None = Field(None, description="checkpoint folder or Hugging Face hub id; default: "
                              "OpenGVLab/InternVL3-1B-hf when cached or downloadable, else the demo checkpoint "
                              "(RANDOM WEIGHTS: it runs, its answers are noise)")
    tp: str = Field("auto", description="GPUs per worker: a number, or auto (from the weights' size and the "
                    "GPUs' memory)")
    workers: str = Field("auto", description="number of workers: a number, or auto (one per group of --tp GPUs)")
    gpus: str | None = Field(None, description="GPU indices to use, e.g. 0,1 (default: all visible)")
    cpu: bool = Field(False, description="ignore GPUs (transformers engine on CPU)")
    engine: str = Field("auto", description="auto | turbomind | transformers | module.path:ClassName, passed to "
                        "every worker")
    demo_dir: Path = Field(Path("checkpoints/demo"), description="where the demo checkpoint is built when needed")
    # network and security
    host: str = Field("127.0.0.1", description="bind address of the UI and the controller (0.0.0.0 exposes "
                      "them); workers started by the all-in-one mode always bind 127.0.0.1")
    port: int = Field(7860, ge=1, le=65535, description="web UI port")
    controller_port: int = Field(21001, ge=1, le=65535, description="controller port")
    worker_port: int = Field(21002, ge=1, le=65535, description="first worker port (the next workers take the "
                             "next ports)")
    api_key: str | None = Field(None, description="require 'Authorization: Bearer KEY' on the API")
    registration_secret: str | None = Field(None, description="secret workers present to register; generated at "
                                            "random when everything runs here")
    controller_url: str | None = Field(None, description="(worker, ui) the controller to use")
    worker_url: str | None = Field(None, description="(worker) address the controller reaches the first worker "
                                   "at, e.g. http://10.0.0.5:21002")
    allow_unauthenticated: bool = Field(False, description="(worker) let a worker on a non-loopback address "
                                        "serve without api keys or a controller")
    # Ray cluster (docs/deployment.md, "More than one machine")
    ray: str | None = Field(None, description="run the whole stack on a Ray cluster: auto (the cluster this "
                            "machine is a node of) or the head's HOST:PORT; controller and web UI on the head node, "
                            "one worker per --tp GPUs of one node, kept running by Ray")
    ray_controller_resource: str | None = Field(None, description="(--ray) a custom Ray resource (ray start "
                                                "--resources) marking the node for the controller and web UI; "
                                                "default: the head node")
    # supervision
    log_dir: Path = Field(Path("logs"), description="where each process's log goes")
    start_timeout_s: float = Field(900.0, gt=0, description="longest wait for everything to be ready")
    max_restarts: int = Field(5, ge=0, le=100, description="quick crashes in a row after which a process is not "
                              "restarted any more")
    quick_crash_s: float = Field(60.0, gt=0, description="a process that dies sooner than this after its start "
                                 "counts as a quick crash")
    stop_timeout_s: float = Field(7.0, gt=0, le=60, description="on Ctrl-C/SIGTERM, grace before SIGKILL")

    @field_validator("tp", "workers")
    @classmethod
    def _auto_int(cls, value: str, info) -> str:
        return _auto_or_positive(value, "--" + info.field_name)

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        if value not in ("auto", "turbomind", "transformers") and not re.fullmatch(r"[\w.]+:\w+", value):
            raise ValueError(f"--engine takes auto, turbomind, transformers or module.path:ClassName, not {value!r}")
        return value

    @field_validator("api_key", "registration_secret")
    @classmethod
    def _plain_secret(cls, value: str | None) -> str | None:
        if value and not _SECRET.match(value):
            raise ValueError("API keys and secrets may use letters, digits and ._~+/=- only")
        return value or None

    @field_validator("ray")
    @classmethod
    def _ray_address(cls, value: str | None) -> str | None:
        if value and value != "auto" and not re.fullmatch(r"[\w.-]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}", value):
            raise ValueError(f"--ray takes auto or the head's HOST:PORT (e.g. 10.0.0.1:6379), not {value!r}")
        return value or None

    @field_validator("controller_url", "worker_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else None

    def tp_number(self) -> int | None:
        return None if self.tp == "auto" else int(self.tp)

    def workers_number(self) -> int | None:
        return None if self.workers == "auto" else int(self.workers)
