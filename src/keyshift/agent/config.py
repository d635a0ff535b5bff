"""The agent's own configuration file (agent.yaml): who it is, where it listens, the key it
shares with keyshift, and the host-side allow-list that bounds what it will do.

The allow-list is the security boundary: whatever a request asks, the agent writes only
under `allowed_paths` (after resolving symlinks), recycles only the IIS application pools
in `iis.app_pools` and reloads only the systemd units in `systemd.units`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Final

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from keyshift import files
from keyshift.domain.durations import Duration
from keyshift.domain.problems import config_errors
from keyshift.errors import ConfigError, EstateInvalid
from keyshift.sources import SecretRef
from keyshift.targets.agent import agent_uuid

DEFAULT_APPCMD: Final = r"C:\Windows\System32\inetsrv\appcmd.exe"
DEFAULT_LISTEN: Final = "0.0.0.0:8443"


class _Model(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)


class IisSettings(_Model):
    """IIS application pools the agent may recycle."""

    appcmd: str = DEFAULT_APPCMD
    """Path to appcmd.exe."""
    app_pools: list[str] = Field(default_factory=list)
    """Pool names that may be recycled; any other is refused."""


class SystemdSettings(_Model):
    """systemd units the agent may reload or restart."""

    systemctl: str = "systemctl"
    """The systemctl program (a path, or a name found on PATH)."""
    units: list[str] = Field(default_factory=list)
    """Unit names that may be reloaded or restarted; any other is refused."""


class AgentConfig(_Model):
    """agent.yaml: the agent's identity, listener, TLS files, signing key and allow-list."""

    agent_id: str
    """The agent's id, a UUID: the `agent_id` of its integration in keyshift's estate."""
    listen: str = DEFAULT_LISTEN
    """`host:port` to listen on for HTTPS."""
    tls_cert: str
    """PEM file of the agent's certificate (self-signed is fine: give keyshift its
    `ca_bundle`)."""
    tls_key: str
    """PEM file of the certificate's private key."""
    key_from: SecretRef
    """`env:NAME` or `file:/path` naming the request-signing key shared with keyshift (at
    least 32 characters)."""
    allowed_paths: list[str] = Field(default_factory=list)
    """Directories the agent may write files under; every other path is refused, also one
    reached through a symlink."""
    iis: IisSettings = Field(default_factory=IisSettings)
    systemd: SystemdSettings = Field(default_factory=SystemdSettings)
    command_timeout: Duration = timedelta(minutes=2)
    """A recycle or reload still running after this long is killed and fails."""
    nonce_file: str | None = None
    """A file where the agent keeps the request nonces it accepted, for as long as their
    timestamps would be accepted (5 minutes), so a request captured just before a restart
    cannot be replayed after it. Without one they are kept in memory only."""

    _uuid = field_validator("agent_id")(agent_uuid)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str) -> str:
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("listen must be host:port, e.g. 0.0.0.0:8443")
        return listen

    @field_validator("nonce_file")
    @classmethod
    def _absolute_file(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_absolute():
            raise ValueError(f"nonce_file {path} must be an absolute path")
        return path

    @field_validator("allowed_paths")
    @classmethod
    def _absolute(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not Path(path).is_absolute():
                raise ValueError(f"allowed path {path} must be absolute")
        return paths

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


def load_agent_config(path: Path) -> AgentConfig:
    """Read and validate agent.yaml; EstateInvalid lists every bad field with its path."""
    try:
        data = yaml.safe_load(files.read_text(path))
    except ConfigError as exc:
        raise EstateInvalid([exc]) from None
    except yaml.YAMLError:
        raise EstateInvalid([ConfigError(str(path), "is not valid YAML")]) from None
    try:
        return AgentConfig.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise EstateInvalid(config_errors(exc)) from None
