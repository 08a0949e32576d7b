"""One settings object for the controller; CLI flags and INTERNVL_CONTROLLER_* environment variables come from it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.bounded_http import HEAD_TIMEOUT_S


class ControllerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INTERNVL_CONTROLLER_", cli_kebab_case=True,
                                      cli_prog_name="python -m controller", cli_implicit_flags=True)

    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 exposes the API to the network")
    port: int = Field(21001, ge=0, le=65535)
    heartbeat_expiry_s: float = Field(15.0, gt=0, description="a worker silent this long is removed")
    dispatch_policy: Literal["affinity", "shortest_queue", "lottery"] = Field(
        "affinity", description="affinity: a conversation's turns go to the worker that served its last turn (its "
        "media and prefix caches), new ones by rendezvous hash, within --affinity-max-excess; shortest_queue: the "
        "least loaded worker; lottery: random, weighted by free capacity")
    affinity_max_excess: int = Field(4, ge=0, le=4096, description="affinity keeps a conversation on its worker "
                                     "while that worker has at most this many more requests (running and waiting) "
                                     "than the least loaded one, and waits for it while it is full within that bound; "
                                     "beyond, the conversation moves to the least loaded. 4: a cache "
                                     "miss costs a media decode and a prefill of the whole history (seconds for a "
                                     "video), while a few more requests in a continuous batch cost each a fraction")
    queue_size: int = Field(100, ge=0, le=1_000_000, description="requests that may wait at the controller, all "
                            "models together, when every worker serving their model is at capacity; beyond, 429 "
                            "queue_full. 0: no waiting line (429 worker_busy at once)")
    queue_timeout_s: float = Field(60.0, gt=0, description="longest wait in that line; then 429 queue_timeout")
    max_attempts: int = Field(3, ge=1, le=16, description="workers tried for one request before the first token")
    breaker_failures: int = Field(5, ge=0, le=1000, description="a worker failing this many requests in a row "
                                  "before their first token (errors, timeouts; not busy answers) is benched: no "
                                  "requests for --breaker-cooldown-s, then one trial request. 5: a worker restarting "
                                  "(a few refused connections) is not benched; a broken one costs at most 5 "
                                  "failovers per cool-down. 0: never benched")
    breaker_cooldown_s: float = Field(30.0, gt=0, description="how long a benched worker gets no requests")
    connect_timeout_s: float = Field(10.0, gt=0, description="longest wait for a connection to a worker; a worker "
                                     "that times out is marked unreachable until its next heartbeat (under a burst "
                                     "of thousands of new streams, 3 s turned a busy loop into errors)")
    first_token_timeout_s: float = Field(120.0, gt=0, description="a worker silent this long before its first "
                                         "token is given up on and the request goes to another worker")
    token_timeout_s: float = Field(60.0, gt=0, description="longest gap between two streamed tokens")
    stream_interval_ms: float = Field(5.0, ge=0, le=100, description="a stream's events that arrive within this "
                                      "time of its last write are sent with the next write, at most this much "
                                      "later: a fast stream costs one write per interval, not one per token; 0: "
                                      "every read is written at once")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest request body accepted")
    api_keys: list[str] = Field(default_factory=list, description="accepted bearer keys for /v1; empty: no auth")
    registration_secret: str | None = Field(None, description="workers must send it to register; unset: only "
                                            "workers on this machine (loopback) may register")
    check_worker_reachable: bool = Field(True, description="probe a registering worker's advertised URL and refuse "
                                         "it unless its /health answers as that worker (id and model)")
    header_timeout_s: float = Field(HEAD_TIMEOUT_S, gt=0, le=600, description="longest a client may take to send a "
                                    "request's line and headers (then 408); they may total 64 KiB (then 431)")
    log_level: str = "info"
    log_format: Literal["kv", "json"] = Field("kv", description="log lines as key=value or JSON")
